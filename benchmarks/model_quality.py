"""Model quality on the real ml-100k, and ALS speed at scale, against references.

Quality (``--quality``): reads ``../shared/data/ml-100k`` through the platform's
own ingestion and dbt build, exports the training snapshot, then prints in one
table, on the same splits:

* rating error: mean RMSE/MAE over the official folds u1-u5 for the global
  mean, user+item biases, Spark ALS as-is (explicit, plain ratings), and our
  explicit ALS (on bias residuals, clipped);
* ranking on ua (test ratings >= 4 relevant, k = 10, all unrated movies as
  candidates): most popular, explicit Spark ALS, Spark implicit ALS at the
  reference setting (rank 50, reg 0.1, alpha 1), our implicit configurations,
  EASE (Steck 2019) on rating values, and the ``implicit`` library's ALS (the
  reference to beat, including the issue's setting: 50 factors, regularisation
  30, alpha 1) over a small grid.

Lists only (``--lists``): most popular and EASE on ua, read straight from the
fold files with the same metric code, in a minute and without Spark.

Speed (``--speed N ...``): synthetic data of N ratings; seconds per ALS
iteration for Spark and for ``implicit`` (2 threads, same rank), side by side.

Usage::

    uv run --group bench python benchmarks/model_quality.py --quality
    .venv/bin/python benchmarks/model_quality.py --lists
    uv run --group bench python benchmarks/model_quality.py --speed 1000000 20000000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def implicit_library_scorer(train: pd.DataFrame, item_ids: np.ndarray, *, factors: int,
                            reg: float, alpha: float, iterations: int, threads: int = 2):
    """The `implicit` library's CPU ALS on the same data; returns a scorer for top_k."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    users = np.sort(train["user_id"].unique())
    uidx = {u: i for i, u in enumerate(users)}
    iidx = {m: j for j, m in enumerate(item_ids)}
    matrix = sp.csr_matrix(
        (alpha * train["rating"].to_numpy(np.float32),
         ([uidx[u] for u in train["user_id"]], [iidx[m] for m in train["movie_id"]])),
        shape=(len(users), len(item_ids)))
    model = AlternatingLeastSquares(factors=factors, regularization=reg, iterations=iterations,
                                    num_threads=threads, random_state=42)
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)

    def scores(batch: np.ndarray) -> np.ndarray:
        rows = np.array([uidx.get(int(u), -1) for u in batch])
        out = np.zeros((len(batch), len(item_ids)))
        out[rows >= 0] = uf[rows[rows >= 0]] @ itf.T
        return out

    return scores


def ease_scorer(train: pd.DataFrame, item_ids: np.ndarray, *, lam: float,
                binary: bool = False):
    """EASE (Steck 2019): the item-item weights ``B = I - P diag(1/diag(P))`` with
    ``P = (XᵀX + lam I)⁻¹``, scores ``X B``; X holds the rating values (or 1s)."""
    users = pd.Index(np.sort(train["user_id"].unique()))
    x = np.zeros((len(users), len(item_ids)))
    x[users.get_indexer(train["user_id"]), pd.Index(item_ids).get_indexer(train["movie_id"])] = (
        1.0 if binary else train["rating"].to_numpy(float))
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0

    def scores(batch: np.ndarray) -> np.ndarray:
        rows = users.get_indexer(batch)
        out = np.zeros((len(batch), len(item_ids)))
        out[rows >= 0] = x[rows[rows >= 0]] @ weights
        return out

    return scores


def build_snapshot(work: Path):
    from moviesforyou import ingest, sources, transform, warehouse
    from moviesforyou.config import Settings
    from spark_jobs.snapshot import export_snapshot

    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env["MFY_HOME"] = str(work / "home")
    settings = Settings.from_env(env)
    warehouse.ensure(settings)
    conn = warehouse.connect(settings)
    ingest.load_release(conn, sources.open_source(ML100K, work), "ml-100k")
    conn.close()
    transform.transform(settings, docs=False)
    snapshot = export_snapshot(settings, work / "snapshot")
    warehouse.embedded(settings).stop()
    return settings, snapshot


def quality(work: Path) -> None:
    from spark_jobs.config import TrainConfig
    from spark_jobs.evaluation import Evaluator
    from spark_jobs.models import ALSParams, factor_scorer, fit_als
    from spark_jobs.session import get_spark
    from spark_jobs.snapshot import load_snapshot
    from spark_jobs.splitters import official_folds

    settings, snapshot = build_snapshot(work)
    ratings = load_snapshot(snapshot)
    splits = official_folds(ML100K, ratings)
    config = TrainConfig(folds_dir=ML100K)
    spark = get_spark(settings.home, app_name="moviesforyou-bench", spark=settings.spark)
    ev = Evaluator(spark, splits, config, (1.0, 5.0))
    rows: list[tuple[str, str, dict]] = []

    def timed(label, kind, fn):
        start = time.perf_counter()
        result = fn()
        result["seconds"] = time.perf_counter() - start
        rows.append((kind, label, result))
        print(f"  {kind:<7} {label:<58} {fmt(result)}", flush=True)

    def plain_als(params: ALSParams):
        # Spark ALS as-is: plain ratings, no biases, no clipping beyond the scale
        def predict(train, test):
            model = fit_als(spark, train, params, seed=42, scale=(1.0, 5.0),
                            on_residuals=False)
            predicted = model.predict(test["user_id"], test["movie_id"])
            _, known = model.dots(test["user_id"], test["movie_id"])
            predicted[~known] = train["rating"].mean()  # no factors: the global mean
            return predicted
        return predict

    print("rating error, mean of u1-u5:", flush=True)
    for name, evaluation in ev.baselines().items():
        if evaluation.rmse is not None:
            rows.append(("rating", name, {"rmse": evaluation.rmse, "mae": evaluation.mae}))
            print(f"  rating  {name:<58} {fmt(rows[-1][2])}", flush=True)
    timed("Spark ALS as-is (rank 10, reg 0.1, 10 iter)", "rating",
          lambda: ev.rating_error(
              plain_als(ALSParams(rank=10, reg_param=0.1, max_iter=10))).as_metrics())
    for params in (ALSParams(rank=20, reg_param=0.1, max_iter=15),
                   ALSParams(rank=50, reg_param=0.15, max_iter=15),
                   ALSParams(rank=100, reg_param=0.2, max_iter=20)):
        timed(f"ours: explicit on bias residuals, {params.label()}", "rating",
              lambda p=params: ev.explicit(p).as_metrics())

    print("ranking on ua, k=10:", flush=True)
    train = splits.ranking[0]
    for name, evaluation in ev.baselines().items():
        if evaluation.ranking:
            rows.append(("ranking", name, evaluation.ranking))
            print(f"  ranking {name:<58} {fmt(evaluation.ranking)}", flush=True)
    explicit = ALSParams(rank=20, reg_param=0.1, max_iter=15)
    timed(f"explicit ALS, {explicit.label()}", "ranking",
          lambda: ev.rank(factor_scorer(fit_als(spark, train, explicit), ev.catalogue)))
    for params in (ALSParams(rank=50, reg_param=0.1, alpha=1.0, max_iter=15, implicit=True),
                   ALSParams(rank=50, reg_param=0.1, alpha=4.0, max_iter=15, implicit=True),
                   ALSParams(rank=100, reg_param=1.0, alpha=8.0, max_iter=15, implicit=True),
                   ALSParams(rank=64, reg_param=0.5, alpha=4.0, max_iter=15, implicit=True)):
        timed(f"Spark {params.label()}", "ranking", lambda p=params: ev.implicit(p).ranking)
    for lam, binary in ((400, True), (800, False), (3200, False), (5000, False)):
        timed(f"EASE lambda={lam} ({'binary' if binary else 'rating values'})", "ranking",
              lambda lam=lam, b=binary: ev.rank(ease_scorer(train, ev.catalogue, lam=lam,
                                                            binary=b)))
    for factors, reg, alpha in ((50, 30.0, 1.0), (64, 0.05, 1.0), (64, 0.05, 4.0),
                                (128, 0.1, 4.0)):
        timed(f"implicit lib factors={factors} reg={reg:g} alpha={alpha:g} (2 threads)", "ranking",
              lambda f=factors, r=reg, a=alpha: ev.rank(implicit_library_scorer(
                  train, ev.catalogue, factors=f, reg=r, alpha=a, iterations=15)))
    spark.stop()


def lists(lams: list[float]) -> None:
    """The Spark-free list families on ua, straight from the fold files (a minute):
    most popular and EASE over a range of lambdas, with the gate's metric code."""
    from spark_jobs.config import TrainConfig
    from spark_jobs.evaluation import Evaluator
    from spark_jobs.models import popularity_scorer
    from spark_jobs.splitters import official_folds

    ratings = pd.read_csv(ML100K / "u.data", sep="\t",
                          names=["user_id", "movie_id", "rating", "rated_at"])
    ev = Evaluator(None, official_folds(ML100K, ratings), TrainConfig(), (1.0, 5.0))
    train = ev.splits.ranking[0]
    print("ranking on ua, k=10 (fold files, no Spark):", flush=True)
    print(f"  {'most popular':<40} {fmt(ev.rank(popularity_scorer(train, ev.catalogue)))}")
    for binary in (True, False):
        for lam in lams:
            start = time.perf_counter()
            result = ev.rank(ease_scorer(train, ev.catalogue, lam=lam, binary=binary))
            result["seconds"] = time.perf_counter() - start
            label = f"EASE lambda={lam:g} ({'binary' if binary else 'rating values'})"
            print(f"  {label:<40} {fmt(result)}", flush=True)


def fmt(result: dict) -> str:
    keys = ("rmse", "mae", "ndcg_at_10", "precision_at_10", "recall_at_10", "coverage_at_10",
            "popularity_bias_at_10", "seconds")
    return "  ".join(f"{k.replace('_at_10', '@10')}={result[k]:.4f}" for k in keys if k in result)


def speed(sizes: list[int], work: Path, rank: int, iterations: int,
          block_counts: list[int]) -> None:
    from moviesforyou import synth
    from moviesforyou.config import Settings
    from spark_jobs.models import ALSParams, als_estimator
    from spark_jobs.session import get_spark

    settings = Settings.from_env({**os.environ, "MFY_HOME": str(work / "home")})
    spark = get_spark(settings.home, app_name="moviesforyou-speed", spark=settings.spark)
    print(f"\nALS speed, rank {rank}, {iterations} iterations, driver memory "
          f"{settings.spark.driver_memory}:")
    print(f"{'ratings':>12} {'blocks':>6} {'Spark s/iter':>13} {'implicit s/iter':>16} "
          f"{'ratio':>7}")
    for n in sorted(sizes):
        out = work / f"synth-{n}"
        synth.generate(out, synth.SynthSpec(n_ratings=n), layout="csv")
        frame = pd.read_csv(out / "ratings.csv").rename(
            columns={"userId": "user_id", "movieId": "movie_id"})
        df = spark.read.csv(str(out / "ratings.csv"), header=True, inferSchema=True) \
            .withColumnRenamed("userId", "user_id").withColumnRenamed("movieId", "movie_id")
        df = df.repartition(os.cpu_count() or 2).cache()
        df.count()
        spark_per_iter = {}
        for blocks in block_counts:
            times = {}
            for iters in (1, iterations):  # the difference removes set-up cost
                start = time.perf_counter()
                params = ALSParams(rank=rank, reg_param=0.1, max_iter=iters, implicit=True)
                model = als_estimator(params, blocks=blocks).fit(df)
                model.userFactors.count()
                times[iters] = time.perf_counter() - start
            spark_per_iter[blocks] = (times[iterations] - times[1]) / (iterations - 1)
        item_ids = np.sort(frame["movie_id"].unique())
        start = time.perf_counter()
        implicit_library_scorer(frame, item_ids, factors=rank, reg=0.1, alpha=1.0,
                                iterations=1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        implicit_library_scorer(frame, item_ids, factors=rank, reg=0.1, alpha=1.0,
                                iterations=iterations)
        many = time.perf_counter() - start
        lib_per_iter = (many - one) / (iterations - 1)
        for blocks, per_iter in spark_per_iter.items():
            print(f"{n:>12,} {blocks:>6} {per_iter:>13.2f} {lib_per_iter:>16.2f} "
                  f"{per_iter / lib_per_iter:>7.1f}", flush=True)
        df.unpersist()
        shutil.rmtree(out)
    spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--lists", type=float, nargs="*", metavar="LAMBDA",
                        help="EASE and most popular on ua from the fold files, no Spark "
                             "(default lambdas: 200 400 800 1600 2400 3200 5000)")
    parser.add_argument("--speed", type=int, nargs="*", default=[])
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--blocks", type=int, nargs="+", default=[os.cpu_count() or 2],
                        help="ALS user/item block counts to time side by side")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mfy-quality-"))
    work.chmod(0o755)
    try:
        if options.lists is not None:
            lists(options.lists or [200, 400, 800, 1600, 2400, 3200, 5000])
        if options.quality:
            quality(work)
        if options.speed:
            speed(options.speed, work, options.rank, options.iterations, options.blocks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
