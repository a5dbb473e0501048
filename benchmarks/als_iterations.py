"""What fewer ALS iterations cost: quality against fit time, side by side in one run.

At 25M ratings a final fit is compute-bound (about 50 s an iteration at rank 64 on
two cores), so the iteration count decides most of a first run's training time. This
fits the product's default configurations (explicit rank 50 / reg 0.15, implicit rank
64 / reg 0.5 / alpha 4) at several ``max_iter`` values on the same splits and prints
mean RMSE, NDCG@10 and coverage with each fit's seconds:

* the real ml-100k (``../shared/data/ml-100k``): RMSE over u1-u5, ranking on ua;
* a seeded synthetic release of ``--ratings`` ratings in the CSV layout: random 80/20
  for RMSE, per-user latest 10 for ranking (the splits a CSV release gets).

Usage::

    .venv/bin/python benchmarks/als_iterations.py [--iters 5 10 15 20] [--ratings 1000000]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from moviesforyou.ingestion import synth
from spark_jobs.config import TrainConfig
from spark_jobs.evaluation import Evaluator
from spark_jobs.models import ITEM, RATING, TIME, USER, ModelParams
from spark_jobs.session import get_spark
from spark_jobs.splitters import make_splits, read_fold

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def measure(spark, name: str, ratings: pd.DataFrame, config: TrainConfig,
            iters: list[int]) -> list[tuple]:
    splits = make_splits(ratings, config)
    evaluator = Evaluator(spark, splits, config, (0.5, 5.0))
    rows = []
    for n in iters:
        started = time.time()
        rmse = evaluator.explicit(ModelParams(rank=50, reg_param=0.15, max_iter=n)).rmse
        explicit_s = (time.time() - started) / len(splits.rating)
        started = time.time()
        ranking = evaluator.implicit(ModelParams(implicit=True, rank=64, reg_param=0.5,
                                               alpha=4.0, max_iter=n)).ranking
        implicit_s = time.time() - started
        rows.append((name, n, rmse, explicit_s, ranking["ndcg_at_10"],
                     ranking["coverage_at_10"], implicit_s))
        print(f"  {name} max_iter {n}: RMSE {rmse:.4f} ({explicit_s:.1f} s a fit), NDCG@10 "
              f"{ranking['ndcg_at_10']:.4f} ({implicit_s:.1f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, nargs="+", default=[5, 10, 15, 20])
    parser.add_argument("--ratings", type=int, default=1_000_000,
                        help="the synthetic release's size (0: skip it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="mfy-bench-iters-"))
    try:
        spark = get_spark(work)
        blocks = spark.sparkContext.defaultParallelism
        rows = []
        if (ML100K / "u.data").exists():
            ratings = read_fold(ML100K / "u.data")
            rows += measure(spark, "ml-100k", ratings,
                            TrainConfig(folds_dir=ML100K, blocks=blocks), args.iters)
        if args.ratings:
            synth.generate(work / "release", synth.SynthSpec(n_ratings=args.ratings),
                           layout="csv")
            ratings = pd.read_csv(work / "release" / "ratings.csv").rename(columns={
                "userId": USER, "movieId": ITEM, "rating": RATING, "timestamp": TIME})
            rows += measure(spark, f"synthetic {args.ratings:,}", ratings,
                            TrainConfig(blocks=blocks), args.iters)
        print("\n| data | max_iter | RMSE | s / explicit fit | NDCG@10 | coverage "
              "| s / implicit fit |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, n, rmse, explicit_s, ndcg, coverage, implicit_s in rows:
            print(f"| {name} | {n} | {rmse:.4f} | {explicit_s:.1f} | {ndcg:.4f} | "
                  f"{coverage:.1%} | {implicit_s:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
