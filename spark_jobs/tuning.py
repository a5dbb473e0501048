"""Tuning: the explicit and the implicit grids, each point a nested MLflow run.

Explicit ALS is tuned with Spark's ``TrainValidationSplit`` by RMSE, on bias
residuals; the best point then meets the BPMF candidates (:func:`choose_rating_model`)
on a seeded random carve-out of the same sample, all fitted and scored alike.
Implicit ALS and the EASE candidates are tuned together by NDCG@k on a
chronological carve-out of the training part (Spark's tuning tools score per-row
predictions, so they cannot rank unseen candidates). Above
``TrainConfig.tune_max_ratings`` everything tunes on the whole histories of a
seeded user sample (:func:`~spark_jobs.splitters.user_sample`); the NumPy
families are candidates only within their sizes (``bpmf_max_ratings``,
``ease_max_size``), measured on all ratings, not the sample.
"""

from __future__ import annotations

from dataclasses import asdict

from spark_jobs import metrics
from spark_jobs.config import TrainConfig
from spark_jobs.evaluation import Evaluator
from spark_jobs.models import (
    ITEM,
    RATING,
    USER,
    Biases,
    ModelParams,
    als_estimator,
    fit_model,
    popularity_scorer,
    spark_ratings,
)
from spark_jobs.splitters import Splits, random_split, ranking_holdout, user_sample


def tune_explicit(spark, splits: Splits, config: TrainConfig, mlflow) -> tuple[ModelParams, list]:
    """Spark's TrainValidationSplit over the explicit grid, on bias residuals, by RMSE."""
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    train = user_sample(splits.rating[0][0], config.tune_max_ratings, config.seed).copy()
    train[RATING] = train[RATING] - Biases.fit(train).predict(train[USER], train[ITEM])
    als = als_estimator(ModelParams(), seed=config.seed, blocks=config.blocks)
    candidates = config.grid(implicit=False)
    grid = (ParamGridBuilder()
            .addGrid(als.rank, sorted({p.rank for p in candidates}))
            .addGrid(als.regParam, sorted({p.reg_param for p in candidates}))
            .addGrid(als.maxIter, sorted({p.max_iter for p in candidates}))
            .build())
    tvs = TrainValidationSplit(
        estimator=als, estimatorParamMaps=grid, trainRatio=0.8, seed=config.seed,
        evaluator=RegressionEvaluator(metricName="rmse", labelCol=RATING,
                                      predictionCol="prediction"))
    with spark_ratings(spark, train) as df:
        fitted = tvs.fit(df)
    results = []
    for point, score in zip(grid, fitted.validationMetrics, strict=True):
        values = {p.name: v for p, v in point.items()}
        params = ModelParams(rank=values["rank"], reg_param=values["regParam"],
                           max_iter=values["maxIter"])
        results.append((params, score))
        with mlflow.start_run(run_name=f"tune {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "TrainValidationSplit",
                               "tuned_on_ratings": len(train)})
            mlflow.log_metric("validation_rmse", score)
    best = min(results, key=lambda r: r[1])[0]
    return best, results


def choose_rating_model(evaluator: Evaluator, config: TrainConfig, tuned: ModelParams,
                        mlflow, *, n_ratings: int) -> tuple[ModelParams, list]:
    """The tuned explicit ALS against the BPMF candidates, by RMSE on a seeded random
    20 % of the tuning sample (every model fit on the other 80 %); ALS alone when BPMF
    is not a candidate (no grid, or more than ``bpmf_max_ratings`` ratings).

    ``n_ratings`` is how many ratings the chosen model will be fitted on: all of
    them, not the evaluation sample the splits may hold (``eval_max_ratings``). (At
    25M the sample's 1.6M training ratings once let BPMF in, and its final fit on all
    25M ratings ran for hours.)"""
    candidates = config.grid(implicit=False, family="bpmf")
    if not candidates or n_ratings > config.bpmf_max_ratings:
        return tuned, []
    sample = user_sample(evaluator.splits.rating[0][0], config.tune_max_ratings, config.seed)
    fit_part, validation = random_split(sample, 0.2, config.seed)
    results = []
    for params in [tuned, *candidates]:
        model = fit_model(evaluator.spark, fit_part, params, seed=config.seed,
                          scale=evaluator.scale, blocks=config.blocks)
        score = metrics.rmse(model.predict(validation[USER], validation[ITEM]),
                             validation[RATING])
        results.append((params, score))
        with mlflow.start_run(run_name=f"family {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "random 80/20 of the tuning sample",
                               "tuned_on_ratings": len(sample)})
            mlflow.log_metric("family_validation_rmse", score)
    return min(results, key=lambda r: r[1])[0], results


def tune_implicit(evaluator: Evaluator, config: TrainConfig, mlflow, *,
                  sizes: tuple[int, int]) -> tuple[ModelParams, list]:
    """Grid over implicit ALS and the EASE candidates (within ``ease_max_size``), by
    NDCG@k on a chronological carve-out of the training part, among the candidates
    whose lists cover at least ``min_coverage`` of the catalogue there (all, if none do,
    or if the best of those ranks no better than most popular on the same carve-out).

    ``sizes`` is (users, movies) of all the ratings the chosen model will be fitted
    on, not of the evaluation sample the splits may hold."""
    train = user_sample(evaluator.splits.ranking[0], config.tune_max_ratings, config.seed)
    fit_part, validation, _ = ranking_holdout(train, max(1, config.holdout_per_user // 2))
    inner = Evaluator(evaluator.spark, Splits([], (fit_part, validation), "tuning"), config,
                      evaluator.scale)
    ease = config.grid(implicit=True, family="ease")
    if min(sizes) > config.ease_max_size:
        ease = []
    results, covered = [], set()
    for params in config.grid(implicit=True) + ease:
        ranking = inner.implicit(params).ranking
        score, coverage = ranking[f"ndcg_at_{config.k}"], ranking[f"coverage_at_{config.k}"]
        results.append((params, score))
        if coverage >= config.min_coverage:
            covered.add(params)
        with mlflow.start_run(run_name=f"tune {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "chronological validation",
                               "tuned_on_ratings": len(train)})
            mlflow.log_metrics({f"validation_ndcg_at_{config.k}": score,
                                f"validation_coverage_at_{config.k}": coverage})
    # the best list among those that show enough of the catalogue, unless that one
    # ranks below most popular there: the floor must not cost the lists their lead
    popular = inner.rank(popularity_scorer(fit_part, inner.catalogue))[f"ndcg_at_{config.k}"]
    mlflow.log_metric(f"validation_most_popular_ndcg_at_{config.k}", popular)
    return pick_list_model(results, covered, popular), results


def pick_list_model(results: list[tuple[ModelParams, float]], covered: set[ModelParams],
                    popular: float) -> ModelParams:
    """The best-scoring candidate among ``covered`` (those above the coverage floor),
    unless none is covered or the best of them scores no better than most popular
    (``popular``): then the best of all."""
    eligible = [r for r in results if r[0] in covered]
    if not eligible or max(score for _, score in eligible) <= popular:
        eligible = results
    return max(eligible, key=lambda r: r[1])[0]
