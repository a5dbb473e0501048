"""Evaluation: every model, baseline and gate is scored by the same code on the same splits.

Rating metrics (RMSE, MAE) are averaged over the rating splits; ranking metrics
(precision, recall, NDCG and MAP at k, coverage, novelty, popularity bias) are
computed on the ranking split with every movie the user rated in training
removed from the candidates (:mod:`spark_jobs.metrics`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from moviesforyou.foundation.config import Settings
from spark_jobs import metrics
from spark_jobs.config import TrainConfig
from spark_jobs.models import (
    ITEM,
    RATING,
    USER,
    Biases,
    ModelParams,
    bias_scorer,
    factor_scorer,
    fit_model,
    popularity_scorer,
    seen_items,
    top_k,
)
from spark_jobs.snapshot import Snapshot, load_snapshot, snapshot_merges
from spark_jobs.splitters import Splits, make_splits


@dataclass
class Evaluation:
    """Held-out figures of one model configuration."""

    rmse: float | None = None
    mae: float | None = None
    ranking: dict[str, float] = field(default_factory=dict)
    #: predictions on the first rating split's test part (for the plots)
    predicted: np.ndarray | None = field(default=None, repr=False)

    def as_metrics(self) -> dict[str, float]:
        out = dict(self.ranking)
        if self.rmse is not None:
            out |= {"rmse": self.rmse, "mae": self.mae}
        return out



class Evaluator:
    """Scores configurations and baselines on fixed splits, the same way every time."""

    def __init__(self, spark, splits: Splits, config: TrainConfig, scale: tuple[float, float]):
        self.spark, self.splits, self.config, self.scale = spark, splits, config, scale
        train, test = splits.ranking
        self.catalogue = np.array(sorted(set(train[ITEM]) | set(test[ITEM])))
        self.seen = seen_items(train)
        liked = test[test[RATING] >= config.relevance_threshold]
        self.relevant = {int(u): set(g.tolist()) for u, g in liked.groupby(USER)[ITEM]}
        self.users = np.array(sorted(self.relevant))
        self.item_users = train.groupby(ITEM)[USER].nunique().to_dict()
        self.n_users = train[USER].nunique()

    def rank(self, scorer) -> dict[str, float]:
        k = self.config.k
        recs = top_k(scorer, self.users, self.catalogue, self.seen, k)
        return metrics.ranking_report(recs, self.relevant, k=k,
                                      catalogue_size=len(self.catalogue),
                                      item_users=self.item_users, n_users=self.n_users)

    def rating_error(self, predict) -> Evaluation:
        """Mean RMSE and MAE of ``predict(train, test)`` over the rating splits."""
        rmses, maes, first = [], [], None
        for train, test in self.splits.rating:
            predicted = predict(train, test)
            first = predicted if first is None else first
            rmses.append(metrics.rmse(predicted, test[RATING]))
            maes.append(metrics.mae(predicted, test[RATING]))
        return Evaluation(rmse=float(np.mean(rmses)), mae=float(np.mean(maes)), predicted=first)

    def explicit(self, params: ModelParams) -> Evaluation:
        def predict(train, test):
            model = fit_model(self.spark, train, params, seed=self.config.seed,
                              scale=self.scale, blocks=self.config.blocks)
            return model.predict(test[USER], test[ITEM])

        return self.rating_error(predict)

    def implicit(self, params: ModelParams) -> Evaluation:
        model = fit_model(self.spark, self.splits.ranking[0], params,
                          seed=self.config.seed, scale=self.scale, blocks=self.config.blocks)
        return Evaluation(ranking=self.rank(factor_scorer(model, self.catalogue)))

    def baselines(self) -> dict[str, Evaluation]:
        train = self.splits.ranking[0]
        biases = self.rating_error(
            lambda tr, te: np.clip(Biases.fit(tr).predict(te[USER], te[ITEM]), *self.scale))
        biases.ranking = self.rank(bias_scorer(Biases.fit(train), self.catalogue))
        return {
            "global mean": self.rating_error(lambda tr, te: np.full(len(te), tr[RATING].mean())),
            "user and item biases": biases,
            "most popular": Evaluation(ranking=self.rank(popularity_scorer(train, self.catalogue))),
        }


def prepare_evaluation(settings: Settings, snapshot: Snapshot, config: TrainConfig, spark,
                       step: str):
    """Ratings, the config with its block count, the rating scale, splits and evaluator.

    The same snapshot and config always give the same splits, so training and a
    later gate evaluate on the same holdout.
    """
    from spark_jobs.session import get_spark

    ratings = load_snapshot(snapshot)
    spark = spark or get_spark(settings.home, app_name=f"moviesforyou-{step}",
                               spark=settings.spark)
    if config.blocks is None:
        # one ALS block per core Spark has: at 20M ratings on 2 cores, 2 blocks ran
        # 2.5x faster per iteration than 4 or 8 (benchmarks/model_quality.py --speed)
        config = dataclasses.replace(config, blocks=spark.sparkContext.defaultParallelism)
    scale = (0.5, 5.0) if (ratings[RATING] % 1).any() else (1.0, 5.0)
    splits = make_splits(ratings, config, merges=snapshot_merges(snapshot))
    return ratings, config, scale, splits, Evaluator(spark, splits, config, scale)
