"""The quality figures on the official ml-100k folds before and after merging the films
the release lists twice, side by side in one run.

Before: the folds and u.data as released (19 films under two ids each). After: both
sides through the films' kept ids, a viewer's later rating kept (what the marts and
``spark_jobs.splitters.merge_fold`` do). Explicit ALS RMSE is the mean over u1-u5;
NDCG@10 and coverage are on ua, for implicit ALS and the most-popular baseline.

    python benchmarks/merge_effect.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from spark_jobs.config import TrainConfig
from spark_jobs.evaluation import Evaluator
from spark_jobs.models import ModelParams, popularity_scorer
from spark_jobs.session import get_spark
from spark_jobs.splitters import merge_fold, official_folds, read_fold

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
EXPLICIT = ModelParams(rank=50, reg_param=0.15, max_iter=10)
IMPLICIT = ModelParams(implicit=True, rank=64, reg_param=0.5, alpha=4.0, max_iter=10)


def merges_of(folder: Path) -> dict[int, int]:
    """merged id -> kept id: the same non-empty IMDb link, the lowest id kept (the
    rule of dbt's int_movie_merges for a 100K release)."""
    items = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1",
                        usecols=[0, 4], names=["movie_id", "url"]).dropna()
    kept = items.groupby("url")["movie_id"].transform("min")
    return {int(m): int(k) for m, k in zip(items["movie_id"], kept, strict=True) if m != k}


def figures(spark, ratings: pd.DataFrame, merges: dict[int, int] | None) -> dict[str, float]:
    config = TrainConfig(folds_dir=ML100K)
    evaluator = Evaluator(spark, official_folds(ML100K, ratings, merges), config, (1.0, 5.0))
    started = time.time()
    rmse = evaluator.explicit(EXPLICIT).rmse
    ranking = evaluator.implicit(IMPLICIT).ranking
    popular = evaluator.rank(popularity_scorer(evaluator.splits.ranking[0],
                                               evaluator.catalogue))
    return {"films": len(evaluator.catalogue), "rmse": rmse,
            "ndcg_at_10": ranking["ndcg_at_10"], "coverage_at_10": ranking["coverage_at_10"],
            "popular_ndcg_at_10": popular["ndcg_at_10"], "seconds": time.time() - started}


def main() -> None:
    released = read_fold(ML100K / "u.data")
    merges = merges_of(ML100K)
    merged = merge_fold(released, merges)
    spark = get_spark(Path(tempfile.mkdtemp(prefix="mfy-merge-bench-")),
                      app_name="moviesforyou-merge-bench")
    rows = {"as released": (len(released), figures(spark, released, None)),
            f"{len(merges)} entries merged": (len(merged), figures(spark, merged, merges))}
    print(f"{'catalogue':<22} {'ratings':>8} {'films':>6} {'RMSE u1-u5':>11} "
          f"{'NDCG@10 ua':>11} {'coverage':>9} {'popular NDCG':>13} {'s':>6}")
    for name, (n, f) in rows.items():
        print(f"{name:<22} {n:>8,} {f['films']:>6,} {f['rmse']:>11.4f} {f['ndcg_at_10']:>11.4f} "
              f"{f['coverage_at_10']:>9.4f} {f['popular_ndcg_at_10']:>13.4f} "
              f"{f['seconds']:>6.1f}")


if __name__ == "__main__":
    main()
