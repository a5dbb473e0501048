"""Train, tune and evaluate ALS; log everything to MLflow; register; run the gate.

Inputs
    the warehouse's ``marts.fct_ratings`` for one release (exported to Parquet,
    see :mod:`spark_jobs.snapshot`), and optionally a folder with the official
    ml-100k folds (``u1.base``..``u5.test``, ``ua.base``, ``ua.test``).
Outputs (MLflow, experiment ``moviesforyou-als``)
    one parent run with the snapshot as a dataset input, the tuning grid as
    nested runs, metrics, plots (``plots/``) and the model; one run per
    baseline; a new version of the registered model ``moviesforyou-als`` with
    the alias ``challenger``; the gate's decision as version tags and a row in
    ``ops.model_promotions``.

Steps:

1. export the snapshot and record its identity (rows, newest rating, SHA-256);
2. split: the official folds when given (u1-u5 for rating error, ua for
   ranking); otherwise a seeded random 80/20 split for rating error and a
   per-user chronological holdout of the latest ratings for ranking;
3. tune explicit ALS with Spark's ``TrainValidationSplit`` (RMSE) over rank,
   regParam and maxIter, and implicit ALS over rank, regParam and alpha on a
   chronological validation carve-out by NDCG@k (Spark's tuning tools score
   per-row predictions, so they cannot rank unseen candidates);
4. evaluate the chosen configurations and the baselines on the same splits;
5. fit both models on everything, log them as one pyfunc, register it;
6. gate: the challenger becomes ``champion`` only if it beats the champion on
   the same holdout (see :mod:`spark_jobs.gate`).

The pieces live beside it, as in microsoft/recommenders: :mod:`~spark_jobs.config`
(what a run depends on), :mod:`~spark_jobs.splitters`, :mod:`~spark_jobs.evaluation`,
:mod:`~spark_jobs.tuning`, :mod:`~spark_jobs.plots` and snapshot keeping in
:mod:`~spark_jobs.snapshot`; the gate is :mod:`~spark_jobs.gate`. The nightly rules
(tune, refresh or re-fit; gate later) are :mod:`moviesforyou.orchestration.training`'s.

Run it as ``moviesforyou train``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings, find_project_root
from spark_jobs import registry
from spark_jobs.config import TrainConfig, TrainingError, train_config
from spark_jobs.evaluation import prepare_evaluation
from spark_jobs.gate import Decision, gate_trained
from spark_jobs.models import ITEM, RATING, USER, ModelParams, factor_scorer, fit_model
from spark_jobs.plots import write_plots
from spark_jobs.snapshot import (
    Snapshot,
    export_and_keep_snapshot,
)
from spark_jobs.splitters import official_folds
from spark_jobs.tuning import choose_rating_model, tune_explicit, tune_implicit

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "official_folds", "train",
           "train_config"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    version: str
    promoted: bool | None
    reason: str
    explicit: ModelParams
    implicit: ModelParams
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    snapshot: Snapshot
    #: the gate's decision, for the promotion ledger (the orchestration writes it)
    decision: Decision | None = None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True, cwd=find_project_root(), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train(settings: Settings, config: TrainConfig | None = None, *, spark=None,
          snapshot: Snapshot | None = None, gate: bool = True) -> TrainResult:
    """The whole job. Raises :class:`TrainingError` (nothing registered) on unusable input.

    Args:
        snapshot: train on this kept snapshot instead of exporting a new one.
        gate: run the champion gate too (:mod:`spark_jobs.gate`); False leaves it to
            :func:`spark_jobs.gate.gate_challenger`
            (the Airflow DAG runs them as two tasks), and ``promoted`` is None.
    """
    config = config or TrainConfig()
    warehouse.ensure(settings)  # ops.model_promotions and the rest exist
    settings.home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mfy-train-", dir=settings.home))
    try:
        snapshot = snapshot or export_and_keep_snapshot(settings, work)
        return _train(settings, config, snapshot, work, spark, gate)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def log_snapshot(snapshot: Snapshot) -> None:
    """The snapshot as the active run's training input and parameters (what a refresh
    later compares the ratings with: ``snapshot_rows``, ``snapshot_max_rated_at``)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # two local sources claim a plain path
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(snapshot.path))
    dataset = MetaDataset(source=source,
                          name=f"fct_ratings@{snapshot.dataset}", digest=snapshot.digest)
    mlflow.log_input(dataset, context="training")
    mlflow.log_params({
        "dataset": snapshot.dataset, "snapshot_rows": snapshot.rows,
        "snapshot_users": snapshot.users, "snapshot_movies": snapshot.movies,
        "snapshot_max_rated_at": snapshot.max_rated_at, "snapshot_sha256": snapshot.sha256})


def _phase_done(name: str, started: float) -> float:
    """Log a phase's seconds (``<name>_seconds`` in MLflow, and the task log); now."""
    import mlflow

    now = time.time()
    log.info("train_als: %s took %.0f s", name, now - started)
    mlflow.log_metric(f"{name}_seconds", now - started)
    return now


def _train(settings: Settings, config: TrainConfig, snapshot: Snapshot, work: Path,
           spark, gate: bool = True) -> TrainResult:
    import mlflow

    started = time.time()
    ratings, config, scale, splits, evaluator = prepare_evaluation(
        settings, snapshot, config, spark, "train")
    spark = evaluator.spark

    registry.configure(settings)
    run_name = f"{snapshot.dataset} {snapshot.digest} {time.strftime('%Y-%m-%d %H:%M')}"
    tags = {"mfy.dataset": snapshot.dataset, "mfy.snapshot": snapshot.digest,
            "mfy.git_commit": git_commit(), "mfy.kind": "als"}
    with registry.start_run(settings, run_name=run_name, tags=tags) as parent:
        log_snapshot(snapshot)
        mlflow.log_params({
            "split": splits.description, "k": config.k,
            "relevance_threshold": config.relevance_threshold, "seed": config.seed,
            "spark_master": spark.sparkContext.master, "als_blocks": config.blocks,
            "tune_max_ratings": config.tune_max_ratings,
            "eval_max_ratings": config.eval_max_ratings,
        })

        # tuning
        phase = time.time()
        if config.explicit:
            best_explicit, explicit_results = config.explicit, [(config.explicit, float("nan"))]
        else:
            best_explicit, explicit_results = tune_explicit(spark, splits, config, mlflow)
            best_explicit, _ = choose_rating_model(evaluator, config, best_explicit, mlflow,
                                                   n_ratings=len(ratings))
        if config.implicit:
            best_implicit, implicit_results = config.implicit, [(config.implicit, float("nan"))]
        else:
            best_implicit, implicit_results = tune_implicit(
                evaluator, config, mlflow,
                sizes=(ratings[USER].nunique(), ratings[ITEM].nunique()))
        mlflow.set_tags({"mfy.rating_family": best_explicit.family,
                         "mfy.list_family": best_implicit.family})
        mlflow.log_params({f"explicit_{k}": v for k, v in asdict(best_explicit).items()})
        mlflow.log_params({f"implicit_{k}": v for k, v in asdict(best_implicit).items()})
        phase = _phase_done("tune", phase)

        # held-out evaluation of the chosen configurations
        explicit_eval = evaluator.explicit(best_explicit)
        implicit_eval = evaluator.implicit(best_implicit)
        model_metrics = {**implicit_eval.ranking, "rmse": explicit_eval.rmse,
                         "mae": explicit_eval.mae}
        if best_explicit.family == "als":  # how explicit ALS would rank (a BPMF fit: minutes)
            explicit_model = fit_model(spark, splits.ranking[0], best_explicit,
                                       seed=config.seed, scale=scale, blocks=config.blocks)
            explicit_ranking = evaluator.rank(factor_scorer(explicit_model, evaluator.catalogue))
            model_metrics[f"explicit_ndcg_at_{config.k}"] = explicit_ranking[f"ndcg_at_{config.k}"]
        mlflow.log_metrics(model_metrics)

        # baselines: their own runs, same experiment, same splits
        baselines = evaluator.baselines()
        client = mlflow.MlflowClient()
        for name, evaluation in baselines.items():
            # siblings of this run, not children: one click compares them in the UI
            run = client.create_run(
                parent.info.experiment_id, run_name=f"baseline: {name}",
                tags={**tags, "mfy.kind": "baseline", "mfy.parent_run_id": parent.info.run_id})
            for key, value in {"baseline": name, "split": splits.description,
                               "snapshot_sha256": snapshot.sha256}.items():
                client.log_param(run.info.run_id, key, value)
            for key, value in evaluation.as_metrics().items():
                client.log_metric(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id)

        # plots
        write_plots(work / "plots", explicit_results, implicit_results, explicit_eval.predicted,
                    splits.rating[0][1][RATING].to_numpy(), model_metrics, baselines, config.k)
        mlflow.log_artifacts(str(work / "plots"), artifact_path="plots")
        mlflow.log_dict({name: e.as_metrics() for name, e in baselines.items()},
                        "baselines.json")

        phase = _phase_done("evaluate", phase)

        # the final models, fit on everything
        final_explicit = fit_model(spark, ratings, best_explicit, seed=config.seed,
                                   scale=scale, blocks=config.blocks)
        final_implicit = fit_model(spark, ratings, best_implicit, seed=config.seed,
                                   scale=scale, blocks=config.blocks)
        phase = _phase_done("fit", phase)
        version = registry.log_and_register(settings, final_explicit, final_implicit,
                                            work / "model", ratings)
        _phase_done("register", phase)
        mlflow.log_metric("train_seconds", time.time() - started)

        mlflow.set_tags({"mfy.model_version": version})
        if gate:
            decision = gate_trained(settings, version, model_metrics,
                                    (best_explicit, best_implicit), splits, snapshot, evaluator,
                                    config, parent.info.run_id)
        else:
            decision = Decision(None, "not gated yet", None, model_metrics, None, version,
                                snapshot.dataset, snapshot.digest, parent.info.run_id)

    return TrainResult(parent.info.run_id, version, decision.promoted, decision.reason,
                       best_explicit, best_implicit, model_metrics,
                       {n: e.as_metrics() for n, e in baselines.items()}, snapshot, decision)
