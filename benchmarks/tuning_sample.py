"""What tuning on a user sample costs: time saved against quality lost, side by side.

On a seeded synthetic release in the CSV layout (default 1,000,000 ratings, the
size of ml-1m), the default grids are tuned twice on the same splits: on all
training ratings, and on the whole histories of a user sample of about
``--cap`` ratings (``TrainConfig.tune_max_ratings``, as every release above 2M
ratings does). Each chosen configuration is then fitted on all the training
ratings and evaluated by the same code the gate uses: mean RMSE on the random
80/20 split, NDCG@10 and coverage on the per-user latest-10 holdout.

Usage::

    .venv/bin/python benchmarks/tuning_sample.py [--ratings 1000000] [--cap 200000]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from moviesforyou.ingestion import synth
from spark_jobs.config import TrainConfig
from spark_jobs.evaluation import Evaluator
from spark_jobs.models import ITEM, RATING, TIME, USER
from spark_jobs.session import get_spark
from spark_jobs.splitters import make_splits
from spark_jobs.tuning import tune_explicit, tune_implicit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--cap", type=int, default=200_000,
                        help="the sample's size in ratings (tune_max_ratings)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import mlflow

    work = Path(tempfile.mkdtemp(prefix="mfy-bench-tuning-"))
    try:
        synth.generate(work / "release", synth.SynthSpec(n_ratings=args.ratings), layout="csv")
        ratings = pd.read_csv(work / "release" / "ratings.csv").rename(columns={
            "userId": USER, "movieId": ITEM, "rating": RATING, "timestamp": TIME})
        spark = get_spark(work)
        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        base = TrainConfig(blocks=spark.sparkContext.defaultParallelism)
        splits = make_splits(ratings, base)
        print(f"{len(ratings):,} ratings, {ratings[USER].nunique():,} users, "
              f"{ratings[ITEM].nunique():,} movies; splits: {splits.description}")
        rows = []
        for cap in (None, args.cap):
            config = dataclasses.replace(base, tune_max_ratings=cap)
            evaluator = Evaluator(spark, splits, config, (0.5, 5.0))
            started = time.time()
            with mlflow.start_run():
                explicit, _ = tune_explicit(spark, splits, config, mlflow)
                implicit, _ = tune_implicit(
                    evaluator, config, mlflow,
                    sizes=(ratings[USER].nunique(), ratings[ITEM].nunique()))
            tuning = time.time() - started
            rmse = evaluator.explicit(explicit).rmse
            ranking = evaluator.implicit(implicit).ranking
            rows.append((f"{cap:,}" if cap else "all", tuning, explicit.label(),
                         implicit.label(), rmse, ranking["ndcg_at_10"],
                         ranking["coverage_at_10"]))
        print("\n| tuned on | tuning s | explicit chosen | implicit chosen | RMSE | NDCG@10 "
              "| coverage |")
        print("|---|---:|---|---|---:|---:|---:|")
        for cap, seconds, explicit, implicit, rmse, ndcg, coverage in rows:
            print(f"| {cap} | {seconds:.0f} | {explicit} | {implicit} | {rmse:.4f} | "
                  f"{ndcg:.4f} | {coverage:.1%} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
