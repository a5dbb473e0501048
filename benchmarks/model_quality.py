"""Model quality on the real ml-100k and on ml-1m-shaped data, and ALS speed at scale,
each against its references in the same run.

Quality (``--quality``): reads ``../shared/data/ml-100k`` through the platform's
own ingestion and dbt build, exports the training snapshot, then prints one
table, every row on the same splits with the same metric code
(:class:`spark_jobs.evaluation.Evaluator`):

* rating error, mean RMSE/MAE over the official folds u1-u5: the global mean,
  user+item biases, Surprise's SVD, KNNBaseline and SVD++ (the usual published
  references), Spark ALS as-is, and ours: explicit ALS on bias residuals and
  BPMF (:mod:`spark_jobs.families`);
* ranking on ua (test ratings >= 4 relevant, k = 10, every unrated movie a
  candidate): biases, most popular, the ``implicit`` library's ALS (the issue's
  reference setting: 50 factors, regularisation 30, alpha 1, and two others),
  Spark implicit ALS, and EASE;
* the product's own ``train()`` with its default configuration (ALS tuned, the
  BPMF and EASE candidates, the choice between them), and how long it took.

``--ml1m [N]``: the same comparison on a synthetic release of N ratings in ml-1m's
``::`` layout (6,040 users, 3,706 movies), with the product's own splits: a
seeded random 80/20 for rating error, each user's latest 10 ratings for lists.

Lists only (``--lists``): most popular and EASE on ua, read straight from the
fold files with the same metric code, in seconds and without Spark.

Speed (``--speed N ...``): synthetic data of N ratings; seconds per ALS
iteration for Spark (each block count) and for ``implicit`` (2 threads, same
rank; its conjugate-gradient solver, its default, and its exact Cholesky solver,
Spark's method), side by side.

Usage::

    uv run --group bench python benchmarks/model_quality.py --quality --ml1m
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
                            reg: float, alpha: float, iterations: int, threads: int = 2,
                            cg: bool = True):
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
                                    num_threads=threads, random_state=42, use_cg=cg)
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)

    def scores(batch: np.ndarray) -> np.ndarray:
        rows = np.array([uidx.get(int(u), -1) for u in batch])
        out = np.zeros((len(batch), len(item_ids)))
        out[rows >= 0] = uf[rows[rows >= 0]] @ itf.T
        return out

    return scores


def surprise_rmse(algo_name: str, train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """A Surprise algorithm (SVD, SVDpp, KNNBaseline: the usual published references)
    fitted on ``train``, its predictions for ``test``."""
    import surprise

    reader = surprise.Reader(rating_scale=(1, 5))
    data = surprise.Dataset.load_from_df(train[["user_id", "movie_id", "rating"]], reader)
    algo = {"SVD": lambda: surprise.SVD(random_state=42),
            "SVD++": lambda: surprise.SVDpp(random_state=42, cache_ratings=True),
            "KNNBaseline": lambda: surprise.KNNBaseline(
                sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False),
            }[algo_name]()
    algo.fit(data.build_full_trainset())
    return np.array([algo.predict(u, i).est for u, i in zip(test["user_id"], test["movie_id"],
                                                             strict=True)])


def build_snapshot(work: Path, source: Path = ML100K, dataset: str = "ml-100k"):
    from moviesforyou.foundation import warehouse
    from moviesforyou.foundation.config import Settings
    from moviesforyou.ingestion import ingest, sources
    from moviesforyou.transformation import transform
    from spark_jobs.snapshot import export_snapshot

    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env["MFY_HOME"] = str(work / "home")
    env["MFY_DATASET"] = dataset
    settings = Settings.from_env(env)
    warehouse.ensure(settings)
    conn = warehouse.connect(settings)
    ingest.load_release(conn, sources.open_source(source, work), dataset)
    conn.close()
    transform.transform(settings, docs=False)
    snapshot = export_snapshot(settings, work / "snapshot")
    return settings, snapshot


class Table:
    """Rows of figures printed as they come, and once more at the end, side by side."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, dict]] = []

    def add(self, kind: str, label: str, result: dict) -> dict:
        self.rows.append((kind, label, result))
        print(f"  {kind:<7} {label:<62} {fmt(result)}", flush=True)
        return result

    def timed(self, kind: str, label: str, fn) -> dict:
        start = time.perf_counter()
        result = dict(fn())
        result["seconds"] = time.perf_counter() - start
        return self.add(kind, label, result)

    def show(self, title: str) -> None:
        print(f"\n{title}")
        for kind, label, result in self.rows:
            print(f"  {kind:<7} {label:<62} {fmt(result)}")


def champion_run(settings, snapshot, config, table: Table, spark, evaluator) -> None:
    """The product's own training (``spark_jobs.train.train``: tuning, families, gate)
    on this snapshot; its chosen models' held-out figures and its tuning time."""
    import mlflow

    from spark_jobs.train import train

    started = time.perf_counter()
    result = train(settings, config, spark=spark, snapshot=snapshot)
    seconds = time.perf_counter() - started
    phases = mlflow.get_run(result.run_id).data.metrics
    label = (f"champion: ratings {result.explicit.label()}; "
             f"lists {result.implicit.label()}")
    print(f"  train(): {seconds:.0f} s in all, tuning {phases.get('tune_seconds', 0):.0f} s, "
          f"evaluation {phases.get('evaluate_seconds', 0):.0f} s, final fits "
          f"{phases.get('fit_seconds', 0):.0f} s")
    table.add("rating", label, {"rmse": result.metrics["rmse"], "mae": result.metrics["mae"],
                                "seconds": seconds})
    table.add("ranking", label, {k: v for k, v in result.metrics.items()
                                 if k.endswith("_at_10") and not k.startswith("explicit")})


def ease_rows(table: Table, ev, lams) -> None:
    """EASE at each lambda on the evaluator's ranking split (one decomposition for all)."""
    from spark_jobs.families import fit_ease
    from spark_jobs.models import ModelParams, factor_scorer

    train = ev.splits.ranking[0]
    for lam in lams:
        params = ModelParams(family="ease", reg_param=lam, rank=0, implicit=True)
        table.timed("ranking", f"ours: {params.label()}",
                    lambda p=params: ev.rank(factor_scorer(fit_ease(train, p), ev.catalogue)))


def quality(work: Path) -> None:
    """Every reference and ours on ml-100k: RMSE over u1-u5, lists on ua."""
    from spark_jobs.config import TrainConfig
    from spark_jobs.evaluation import Evaluator
    from spark_jobs.models import ModelParams, fit_als
    from spark_jobs.session import get_spark
    from spark_jobs.snapshot import load_snapshot, snapshot_merges
    from spark_jobs.splitters import official_folds

    settings, snapshot = build_snapshot(work)
    ratings = load_snapshot(snapshot)
    # the marts merge the films listed twice: the folds go through the same ids
    splits = official_folds(ML100K, ratings, snapshot_merges(snapshot))
    config = TrainConfig(folds_dir=ML100K)
    spark = get_spark(settings.home, app_name="moviesforyou-bench", spark=settings.spark)
    ev = Evaluator(spark, splits, config, (1.0, 5.0))
    table = Table()

    def plain_als(params: ModelParams):
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
            table.add("rating", name, {"rmse": evaluation.rmse, "mae": evaluation.mae})
    for name in ("SVD", "KNNBaseline", "SVD++"):
        table.timed("rating", f"Surprise {name} (reference)",
                    lambda n=name: ev.rating_error(
                        lambda tr, te, n=n: surprise_rmse(n, tr, te)).as_metrics())
    table.timed("rating", "Spark ALS as-is (rank 10, reg 0.1, 10 iter)",
                lambda: ev.rating_error(plain_als(
                    ModelParams(rank=10, reg_param=0.1, max_iter=10))).as_metrics())
    for params in (ModelParams(rank=50, reg_param=0.15, max_iter=10),
                   ModelParams(rank=100, reg_param=0.2, max_iter=20),
                   ModelParams(family="bpmf", rank=10, max_iter=150),
                   ModelParams(family="bpmf", rank=20, max_iter=150),
                   ModelParams(family="bpmf", rank=40, max_iter=150)):
        table.timed("rating", f"ours: {params.label()}",
                    lambda p=params: ev.explicit(p).as_metrics())

    print("ranking on ua, k=10:", flush=True)
    train = splits.ranking[0]
    for name, evaluation in ev.baselines().items():
        if evaluation.ranking:
            table.add("ranking", name, evaluation.ranking)
    for factors, reg, alpha in ((50, 30.0, 1.0), (64, 0.05, 1.0), (128, 0.1, 4.0)):
        table.timed("ranking", f"implicit lib factors={factors} reg={reg:g} alpha={alpha:g} "
                               "(reference)",
                    lambda f=factors, r=reg, a=alpha: ev.rank(implicit_library_scorer(
                        train, ev.catalogue, factors=f, reg=r, alpha=a, iterations=15)))
    for params in (ModelParams(rank=50, reg_param=0.1, alpha=1.0, max_iter=10, implicit=True),
                   ModelParams(rank=64, reg_param=0.5, alpha=4.0, max_iter=10, implicit=True),
                   ModelParams(rank=100, reg_param=1.0, alpha=8.0, max_iter=10, implicit=True)):
        table.timed("ranking", f"ours: Spark {params.label()}",
                    lambda p=params: ev.implicit(p).ranking)
    ease_rows(table, ev, (800, 1600, 2400, 3200))
    print("the product's training (train(): ALS tuned, BPMF and EASE candidates, gate):")
    champion_run(settings, snapshot, config, table, spark, ev)
    table.show("ml-100k, one run (rating: mean over u1-u5; ranking: ua, k = 10)")
    spark.stop()


def ml1m_shaped(work: Path, ratings: int) -> None:
    """The comparison on a synthetic release in ml-1m's ``::`` layout: the product's
    own splits (a seeded random 80/20 for rating error, each user's latest 10 ratings
    for lists), its champion against biases, most popular and the ``implicit`` library."""
    from moviesforyou.ingestion import synth
    from spark_jobs.config import TrainConfig
    from spark_jobs.evaluation import Evaluator
    from spark_jobs.session import get_spark
    from spark_jobs.snapshot import load_snapshot
    from spark_jobs.splitters import make_splits

    release = work / "synth-1m"
    synth.generate(release, synth.SynthSpec(n_ratings=ratings, n_users=6040, n_movies=3706),
                   layout="1m")
    settings, snapshot = build_snapshot(work, release, "synth-1m")
    config = TrainConfig()
    frame = load_snapshot(snapshot)
    splits = make_splits(frame, config)
    spark = get_spark(settings.home, app_name="moviesforyou-bench", spark=settings.spark)
    scale = (0.5, 5.0) if (frame["rating"] % 1).any() else (1.0, 5.0)
    ev = Evaluator(spark, splits, config, scale)
    table = Table()
    print(f"{len(frame):,} ratings in ml-1m's layout; {splits.description}:", flush=True)
    for name, evaluation in ev.baselines().items():
        if evaluation.rmse is not None:
            table.add("rating", name, {"rmse": evaluation.rmse, "mae": evaluation.mae})
        if evaluation.ranking:
            table.add("ranking", name, evaluation.ranking)
    for factors, reg, alpha in ((50, 30.0, 1.0), (64, 0.05, 1.0)):
        table.timed("ranking", f"implicit lib factors={factors} reg={reg:g} alpha={alpha:g} "
                               "(reference)",
                    lambda f=factors, r=reg, a=alpha: ev.rank(implicit_library_scorer(
                        splits.ranking[0], ev.catalogue, factors=f, reg=r, alpha=a,
                        iterations=15)))
    ease_rows(table, ev, (800, 3200, 12800))
    champion_run(settings, snapshot, config, table, spark, ev)
    table.show(f"ml-1m-shaped synthetic release ({len(frame):,} ratings), one run")
    spark.stop()


def lists(lams: list[float]) -> None:
    """The Spark-free list families on ua, straight from the fold files (a minute):
    most popular and EASE over a range of lambdas, with the gate's metric code."""
    from spark_jobs.config import TrainConfig
    from spark_jobs.evaluation import Evaluator
    from spark_jobs.families import fit_ease
    from spark_jobs.models import ModelParams, factor_scorer, popularity_scorer
    from spark_jobs.splitters import official_folds

    ratings = pd.read_csv(ML100K / "u.data", sep="\t",
                          names=["user_id", "movie_id", "rating", "rated_at"])
    ev = Evaluator(None, official_folds(ML100K, ratings), TrainConfig(), (1.0, 5.0))
    train = ev.splits.ranking[0]
    print("ranking on ua, k=10 (fold files, no Spark):", flush=True)
    print(f"  {'most popular':<40} {fmt(ev.rank(popularity_scorer(train, ev.catalogue)))}")
    for lam in lams:
        start = time.perf_counter()
        params = ModelParams(family="ease", reg_param=lam, rank=0, implicit=True)
        result = ev.rank(factor_scorer(fit_ease(train, params), ev.catalogue))
        result["seconds"] = time.perf_counter() - start
        print(f"  {params.label():<40} {fmt(result)}", flush=True)


def fmt(result: dict) -> str:
    keys = ("rmse", "mae", "ndcg_at_10", "precision_at_10", "recall_at_10", "coverage_at_10",
            "popularity_bias_at_10", "seconds")
    return "  ".join(f"{k.replace('_at_10', '@10')}={result[k]:.4f}" for k in keys if k in result)


def spark_iteration_seconds(spark, fit) -> float:
    """Seconds per iteration of an implicit ALS ``fit()``, from Spark's own job timeline
    (its REST API): each half-iteration ends with one ``aggregate`` job (the Gram
    matrix of the side just solved), so the time between those jobs' ends, after the
    first two iterations (set-up, first reads), is the steady iteration time; the
    blocks' construction before them is not counted."""
    import json
    import urllib.request
    import uuid
    from datetime import datetime

    group = uuid.uuid4().hex
    spark.sparkContext.setJobGroup(group, "timed ALS fit")
    fit()
    spark.sparkContext.setJobGroup("", "")
    url = (f"{spark.sparkContext.uiWebUrl}/api/v1/applications/"
           f"{spark.sparkContext.applicationId}/jobs")
    with urllib.request.urlopen(url) as answer:
        jobs = [j for j in json.load(answer) if j.get("jobGroup") == group
                and j["name"].startswith("aggregate")]
    ends = sorted(datetime.strptime(j["completionTime"].replace("GMT", "+0000"),
                                    "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() for j in jobs)
    if len(ends) < 6:
        raise SystemExit("--iterations must be at least 3 for a steady iteration time")
    return (ends[-1] - ends[3]) / ((len(ends) - 4) / 2)


def speed(sizes: list[int], work: Path, rank: int, iterations: int,
          block_counts: list[int]) -> None:
    from moviesforyou.foundation.config import Settings
    from moviesforyou.ingestion import synth
    from spark_jobs.models import ModelParams, als_estimator
    from spark_jobs.session import get_spark

    settings = Settings.from_env({**os.environ, "MFY_HOME": str(work / "home")})
    spark = get_spark(settings.home, app_name="moviesforyou-speed", spark=settings.spark)
    print(f"\nALS speed, rank {rank}, {iterations} iterations, driver memory "
          f"{settings.spark.driver_memory}:")
    print(f"{'ratings':>12} {'blocks':>6} {'Spark s/iter':>13} {'implicit CG':>12} "
          f"{'implicit exact':>16} {'ratio CG':>9} {'ratio exact':>11}")
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
            params = ModelParams(rank=rank, reg_param=0.1, max_iter=iterations, implicit=True)
            spark_per_iter[blocks] = spark_iteration_seconds(
                spark, lambda p=params, b=blocks, d=df: als_estimator(p, blocks=b).fit(d))
        item_ids = np.sort(frame["movie_id"].unique())
        library = {}
        for cg in (True, False):  # its default conjugate gradient; the exact solve
            times = {}
            for iters in (1, iterations):
                start = time.perf_counter()
                implicit_library_scorer(frame, item_ids, factors=rank, reg=0.1, alpha=1.0,
                                        iterations=iters, cg=cg)
                times[iters] = time.perf_counter() - start
            library[cg] = (times[iterations] - times[1]) / (iterations - 1)
        for blocks, per_iter in spark_per_iter.items():
            print(f"{n:>12,} {blocks:>6} {per_iter:>13.2f} {library[True]:>12.2f} "
                  f"{library[False]:>16.2f} {per_iter / library[True]:>9.1f} "
                  f"{per_iter / library[False]:>11.1f}", flush=True)
        df.unpersist()
        shutil.rmtree(out)
    spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--ml1m", type=int, nargs="?", const=1_000_209, metavar="RATINGS",
                        help="the comparison on a synthetic release shaped like ml-1m")
    parser.add_argument("--lists", type=float, nargs="*", metavar="LAMBDA",
                        help="EASE and most popular on ua from the fold files, no Spark "
                             "(default lambdas: 200 400 800 1600 2400 3200 5000)")
    parser.add_argument("--speed", type=int, nargs="*", default=[])
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=6)
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
        if options.ml1m:
            ml1m_shaped(work / "ml1m", options.ml1m)
        if options.speed:
            speed(options.speed, work, options.rank, options.iterations, options.blocks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
