"""Tuning: the explicit and the implicit ALS grids, each point a nested MLflow run.

Explicit ALS is tuned with Spark's ``TrainValidationSplit`` by RMSE, on bias
residuals; implicit ALS by NDCG@k on a chronological carve-out of the training
part (Spark's tuning tools score per-row predictions, so they cannot rank
unseen candidates). Above ``TrainConfig.tune_max_ratings`` both tune on the
whole histories of a seeded user sample (:func:`~spark_jobs.splitters.user_sample`).
"""

from __future__ import annotations

from dataclasses import asdict

from spark_jobs.config import TrainConfig
from spark_jobs.evaluation import Evaluator
from spark_jobs.models import ITEM, RATING, USER, ALSParams, Biases, als_estimator, spark_ratings
from spark_jobs.splitters import Splits, chronological_holdout, user_sample


def tune_explicit(spark, splits: Splits, config: TrainConfig, mlflow) -> tuple[ALSParams, list]:
    """Spark's TrainValidationSplit over the explicit grid, on bias residuals, by RMSE."""
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    train = user_sample(splits.rating[0][0], config.tune_max_ratings, config.seed).copy()
    train[RATING] = train[RATING] - Biases.fit(train).predict(train[USER], train[ITEM])
    als = als_estimator(ALSParams(), seed=config.seed, blocks=config.blocks)
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
        params = ALSParams(rank=values["rank"], reg_param=values["regParam"],
                           max_iter=values["maxIter"])
        results.append((params, score))
        with mlflow.start_run(run_name=f"tune {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "TrainValidationSplit",
                               "tuned_on_ratings": len(train)})
            mlflow.log_metric("validation_rmse", score)
    best = min(results, key=lambda r: r[1])[0]
    return best, results


def tune_implicit(evaluator: Evaluator, config: TrainConfig, mlflow) -> tuple[ALSParams, list]:
    """Grid over implicit ALS, by NDCG@k on a chronological carve-out of the training part."""
    train = user_sample(evaluator.splits.ranking[0], config.tune_max_ratings, config.seed)
    fit_part, validation = chronological_holdout(train, max(1, config.holdout_per_user // 2))
    inner = Evaluator(evaluator.spark, Splits([], (fit_part, validation), "tuning"), config,
                      evaluator.scale)
    results = []
    for params in config.grid(implicit=True):
        score = inner.implicit(params).ranking[f"ndcg_at_{config.k}"]
        results.append((params, score))
        with mlflow.start_run(run_name=f"tune {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "chronological validation",
                               "tuned_on_ratings": len(train)})
            mlflow.log_metric(f"validation_ndcg_at_{config.k}", score)
    best = max(results, key=lambda r: r[1])[0]
    return best, results
