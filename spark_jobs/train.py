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
   the same holdout (see :mod:`spark_jobs.registry`).

Run it as ``moviesforyou train`` or ``spark-submit spark_jobs/train.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moviesforyou import warehouse
from moviesforyou.config import Settings, find_project_root
from moviesforyou.errors import MoviesForYouError
from spark_jobs import metrics, registry
from spark_jobs.models import (
    ITEM,
    RATING,
    TIME,
    USER,
    ALSParams,
    Biases,
    als_estimator,
    bias_scorer,
    factor_scorer,
    fit_als,
    popularity_scorer,
    seen_items,
    top_k,
)
from spark_jobs.snapshot import Snapshot, export_snapshot

log = logging.getLogger(__name__)


class TrainingError(MoviesForYouError):
    """The job cannot train on this input; nothing was registered."""


@dataclass
class TrainConfig:
    """Everything a run depends on; each field is logged as an MLflow parameter."""

    folds_dir: Path | None = None
    k: int = 10
    relevance_threshold: float = 4.0
    holdout_per_user: int = 10
    test_fraction: float = 0.2
    seed: int = 42
    # defaults from benchmarks/model_quality.py on ml-100k: reg 0.15 / rank 50 was the
    # best explicit setting, reg 0.5 / alpha 4 / rank 64 the best implicit one
    explicit_grid: dict = field(default_factory=lambda: {
        "rank": [20, 50], "reg_param": [0.1, 0.15], "max_iter": [15]})
    implicit_grid: dict = field(default_factory=lambda: {
        "rank": [50, 64], "reg_param": [0.1, 0.5], "alpha": [1.0, 4.0], "max_iter": [15]})
    explicit: ALSParams | None = None  # fixed configuration: skip tuning
    implicit: ALSParams | None = None
    rmse_tolerance: float = 0.01
    blocks: int | None = None

    def grid(self, implicit: bool) -> list[ALSParams]:
        spec = self.implicit_grid if implicit else self.explicit_grid
        keys = list(spec)
        return [ALSParams(implicit=implicit, **dict(zip(keys, values, strict=True)))
                for values in itertools.product(*(spec[k] for k in keys))]


@dataclass
class Splits:
    """Rating splits (one or the five official folds) and one ranking split."""

    rating: list[tuple[pd.DataFrame, pd.DataFrame]]
    ranking: tuple[pd.DataFrame, pd.DataFrame]
    description: str

    def identity(self, snapshot: Snapshot) -> str:
        return hashlib.sha256(f"{snapshot.sha256}|{self.description}".encode()).hexdigest()[:16]


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


@dataclass
class TrainResult:
    run_id: str
    version: str
    promoted: bool | None
    reason: str
    explicit: ALSParams
    implicit: ALSParams
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    snapshot: Snapshot


# --------------------------------------------------------------------------- splits


def read_fold(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", names=[USER, ITEM, RATING, TIME])
    return frame.astype({USER: "int32", ITEM: "int32", RATING: "float32"})


def official_folds(folder: Path, ratings: pd.DataFrame) -> Splits:
    names = [*(f"u{i}" for i in range(1, 6)), "ua"]
    missing = [f"{n}.{part}" for n in names for part in ("base", "test")
               if not (folder / f"{n}.{part}").exists()]
    if missing:
        raise TrainingError(f"{folder}: missing fold file(s) {', '.join(missing)}")
    known = set(zip(ratings[USER], ratings[ITEM], strict=True))
    folds = {}
    for name in names:
        base, test = read_fold(folder / f"{name}.base"), read_fold(folder / f"{name}.test")
        outside = [p for p in zip(test[USER], test[ITEM], strict=True) if p not in known]
        if outside:
            raise TrainingError(f"{folder / (name + '.test')}: {len(outside)} ratings are not in "
                                f"the snapshot (e.g. user {outside[0][0]}, movie {outside[0][1]})"
                                ": these folds belong to another release")
        folds[name] = (base, test)
    return Splits([folds[f"u{i}"] for i in range(1, 6)], folds["ua"],
                  f"official folds u1-u5, ua ({folder.name})")


def chronological_holdout(ratings: pd.DataFrame,
                          per_user: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's latest ``per_user`` ratings form the test (users with twice as many)."""
    ordered = ratings.sort_values([USER, TIME, ITEM], kind="stable")
    rank_from_end = ordered.groupby(USER).cumcount(ascending=False)
    counts = ordered.groupby(USER)[ITEM].transform("size")
    test_mask = (rank_from_end < per_user) & (counts >= 2 * per_user)
    return ordered[~test_mask], ordered[test_mask]


def random_split(ratings: pd.DataFrame, fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    test_mask = rng.random(len(ratings)) < fraction
    return ratings[~test_mask], ratings[test_mask]


def make_splits(ratings: pd.DataFrame, config: TrainConfig) -> Splits:
    if config.folds_dir:
        return official_folds(Path(config.folds_dir), ratings)
    train, test = chronological_holdout(ratings, config.holdout_per_user)
    if test.empty:
        raise TrainingError(
            f"no user has {2 * config.holdout_per_user} ratings: too little data for a "
            "per-user chronological holdout")
    return Splits([random_split(ratings, config.test_fraction, config.seed)], (train, test),
                  f"random {config.test_fraction:g} seed {config.seed}; latest "
                  f"{config.holdout_per_user} per user")


# --------------------------------------------------------------------------- evaluation


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

    def explicit(self, params: ALSParams) -> Evaluation:
        def predict(train, test):
            model = fit_als(self.spark, train, params, seed=self.config.seed, scale=self.scale,
                            blocks=self.config.blocks)
            return model.predict(test[USER], test[ITEM])

        return self.rating_error(predict)

    def implicit(self, params: ALSParams) -> Evaluation:
        model = fit_als(self.spark, self.splits.ranking[0], params,
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


# --------------------------------------------------------------------------- tuning


def tune_explicit(spark, splits: Splits, config: TrainConfig, mlflow) -> tuple[ALSParams, list]:
    """Spark's TrainValidationSplit over the explicit grid, on bias residuals, by RMSE."""
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    train = splits.rating[0][0].copy()
    train[RATING] = train[RATING] - Biases.fit(train).predict(train[USER], train[ITEM])
    df = spark.createDataFrame(train[[USER, ITEM, RATING]].astype(
        {USER: "int32", ITEM: "int32", RATING: "float32"}))
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
    fitted = tvs.fit(df)
    results = []
    for point, score in zip(grid, fitted.validationMetrics, strict=True):
        values = {p.name: v for p, v in point.items()}
        params = ALSParams(rank=values["rank"], reg_param=values["regParam"],
                           max_iter=values["maxIter"])
        results.append((params, score))
        with mlflow.start_run(run_name=f"tune {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "TrainValidationSplit"})
            mlflow.log_metric("validation_rmse", score)
    best = min(results, key=lambda r: r[1])[0]
    return best, results


def tune_implicit(evaluator: Evaluator, config: TrainConfig, mlflow) -> tuple[ALSParams, list]:
    """Grid over implicit ALS, by NDCG@k on a chronological carve-out of the training part."""
    train = evaluator.splits.ranking[0]
    fit_part, validation = chronological_holdout(train, max(1, config.holdout_per_user // 2))
    inner = Evaluator(evaluator.spark, Splits([], (fit_part, validation), "tuning"), config,
                      evaluator.scale)
    results = []
    for params in config.grid(implicit=True):
        score = inner.implicit(params).ranking[f"ndcg_at_{config.k}"]
        results.append((params, score))
        with mlflow.start_run(run_name=f"tune {params.label()}", nested=True):
            mlflow.log_params({**asdict(params), "tuner": "chronological validation"})
            mlflow.log_metric(f"validation_ndcg_at_{config.k}", score)
    best = max(results, key=lambda r: r[1])[0]
    return best, results


# --------------------------------------------------------------------------- plots


def write_plots(folder: Path, explicit_results, implicit_results, predicted, actual,
                model_eval: dict[str, float], baselines: dict[str, Evaluation], k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for reg in sorted({p.reg_param for p, _ in explicit_results}):
        pts = sorted((p.rank, s) for p, s in explicit_results if p.reg_param == reg)
        axes[0].plot(*zip(*pts, strict=True), marker="o", label=f"regParam {reg:g}")
    axes[0].set(title="Explicit ALS: validation RMSE", xlabel="rank", ylabel="RMSE")
    axes[0].legend()
    for alpha in sorted({p.alpha for p, _ in implicit_results}):
        pts = sorted((p.rank, s) for p, s in implicit_results if p.alpha == alpha)
        axes[1].plot(*zip(*pts, strict=True), marker="o", label=f"alpha {alpha:g}")
    axes[1].set(title=f"Implicit ALS: validation NDCG@{k}", xlabel="rank", ylabel="NDCG")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(folder / "tuning.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.arange(0.25, 5.5, 0.25)
    ax.hist(actual, bins=bins, alpha=0.6, label="actual", density=True)
    ax.hist(predicted, bins=bins, alpha=0.6, label="predicted (explicit ALS)", density=True)
    ax.set(title="Predicted against actual ratings (held out)", xlabel="stars", ylabel="density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "predicted_vs_actual.png", dpi=110)
    plt.close(fig)

    names = ["ALS", *baselines]
    rmse = [model_eval.get("rmse"), *(b.rmse for b in baselines.values())]
    ndcg = [model_eval.get(f"ndcg_at_{k}"),
            *(b.ranking.get(f"ndcg_at_{k}") for b in baselines.values())]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [v if v is not None else 0 for v in rmse], color="#4c72b0")
    axes[0].set(title="RMSE (lower is better)")
    axes[1].bar(names, [v if v is not None else 0 for v in ndcg], color="#55a868")
    axes[1].set(title=f"NDCG@{k} (higher is better)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(folder / "model_vs_baselines.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the job


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True, cwd=find_project_root(), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_snapshot(snapshot: Snapshot) -> pd.DataFrame:
    ratings = pd.read_parquet(snapshot.path)
    missing = {USER, ITEM, RATING, TIME} - set(ratings.columns)
    if missing:
        raise TrainingError(f"{snapshot.path}: missing column(s) {sorted(missing)}")
    if ratings.empty:
        raise TrainingError(f"{snapshot.path}: no ratings")
    bad = ratings[~np.isfinite(ratings[RATING]) | (ratings[RATING] <= 0)]
    if len(bad):
        raise TrainingError(f"{snapshot.path}: {len(bad)} ratings are not positive finite numbers")
    return ratings


def train(settings: Settings, config: TrainConfig | None = None, *, spark=None,
          snapshot: Snapshot | None = None, gate: bool = True) -> TrainResult:
    """The whole job. Raises :class:`TrainingError` (nothing registered) on unusable input.

    Args:
        snapshot: train on this kept snapshot instead of exporting a new one.
        gate: run the champion gate too; False leaves it to :func:`gate_challenger`
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


def export_and_keep_snapshot(settings: Settings, work: Path | None = None) -> Snapshot:
    """Export ``fct_ratings`` and keep it under ``$MFY_HOME/snapshots/<digest>``."""
    work = work or Path(tempfile.mkdtemp(prefix="mfy-snapshot-", dir=settings.home))
    return keep_snapshot(export_snapshot(settings, work / "snapshot"),
                         settings.home / "snapshots")


def read_kept_snapshot(path: Path) -> Snapshot:
    """A kept snapshot from its ``snapshot.json`` (or the folder holding it)."""
    path = Path(path)
    meta = json.loads((path / "snapshot.json" if path.is_dir() else path).read_text())
    return Snapshot(**{**meta, "path": Path(meta["path"])})


def gate_challenger(settings: Settings, version: str, config: TrainConfig | None = None, *,
                    spark=None) -> registry.Decision:
    """Run the champion gate for a version trained with ``gate=False``.

    The version's run names its snapshot and metrics; the same ``config`` as at
    training rebuilds the same splits, so a re-fit champion is scored on the
    challenger's holdout.
    """

    config = config or TrainConfig()
    client = registry.configure(settings)
    model = client.get_model_version(registry.model_name(), str(version))
    run = client.get_run(model.run_id)
    snapshot = read_kept_snapshot(settings.home / "snapshots" / run.data.tags["mfy.snapshot"])
    _, config, _, splits, evaluator = _prepare(settings, snapshot, config, spark, "gate")
    metrics = {k: v for k, v in run.data.metrics.items() if k != "train_seconds"}
    params = (ALSParams(**json.loads(model.tags["mfy.explicit_params"])),
              ALSParams(**json.loads(model.tags["mfy.implicit_params"])))
    decision = registry.gate(
        settings, version=str(version), challenger_metrics=metrics, challenger=params,
        split_id=splits.identity(snapshot),
        evaluate=lambda e, i: {"rmse": evaluator.explicit(e).rmse,
                               **evaluator.implicit(i).ranking},
        k=config.k, rmse_tolerance=config.rmse_tolerance, snapshot=snapshot,
        run_id=model.run_id)
    client.set_tag(model.run_id, "mfy.promoted", str(decision.promoted))
    return decision


def keep_snapshot(snapshot: Snapshot, folder: Path, keep: int = 3) -> Snapshot:
    """Move a snapshot to ``folder/<digest>/`` (the run's dataset input points there).

    The same data keeps one copy; only the ``keep`` most recent snapshots stay.
    """
    target = folder / snapshot.digest
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(snapshot.path.parent), target)
    else:
        os.utime(target)
    for old in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    kept = dataclasses.replace(snapshot, path=target / snapshot.path.name)
    (target / "snapshot.json").write_text(
        json.dumps({**dataclasses.asdict(kept), "path": str(kept.path)}, indent=2))
    return kept


def _prepare(settings: Settings, snapshot: Snapshot, config: TrainConfig, spark, step: str):
    """Ratings, the config with its block count, the rating scale, splits and evaluator.

    The same snapshot and config always give the same splits, so training and a
    later gate evaluate on the same holdout.
    """
    from spark_jobs.session import get_spark

    ratings = load_snapshot(snapshot)
    spark = spark or get_spark(settings.home, app_name=f"moviesforyou-{step}")
    if config.blocks is None:
        # one ALS block per core Spark has: at 20M ratings on 2 cores, 2 blocks ran
        # 2.5x faster per iteration than 4 or 8 (benchmarks/model_quality.py --speed)
        config = dataclasses.replace(config, blocks=spark.sparkContext.defaultParallelism)
    scale = (0.5, 5.0) if (ratings[RATING] % 1).any() else (1.0, 5.0)
    splits = make_splits(ratings, config)
    return ratings, config, scale, splits, Evaluator(spark, splits, config, scale)


def _train(settings: Settings, config: TrainConfig, snapshot: Snapshot, work: Path,
           spark, gate: bool = True) -> TrainResult:
    import mlflow


    started = time.time()
    ratings, config, scale, splits, evaluator = _prepare(settings, snapshot, config, spark,
                                                         "train")
    spark = evaluator.spark

    registry.configure(settings)
    run_name = f"{snapshot.dataset} {snapshot.digest} {time.strftime('%Y-%m-%d %H:%M')}"
    tags = {"mfy.dataset": snapshot.dataset, "mfy.snapshot": snapshot.digest,
            "mfy.git_commit": git_commit(), "mfy.kind": "als"}
    with mlflow.start_run(run_name=run_name, tags=tags) as parent:
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
            "snapshot_max_rated_at": snapshot.max_rated_at, "snapshot_sha256": snapshot.sha256,
            "split": splits.description, "k": config.k,
            "relevance_threshold": config.relevance_threshold, "seed": config.seed,
            "spark_master": spark.sparkContext.master, "als_blocks": config.blocks,
        })

        # tuning
        if config.explicit:
            best_explicit, explicit_results = config.explicit, [(config.explicit, float("nan"))]
        else:
            best_explicit, explicit_results = tune_explicit(spark, splits, config, mlflow)
        if config.implicit:
            best_implicit, implicit_results = config.implicit, [(config.implicit, float("nan"))]
        else:
            best_implicit, implicit_results = tune_implicit(evaluator, config, mlflow)
        mlflow.log_params({f"explicit_{k}": v for k, v in asdict(best_explicit).items()})
        mlflow.log_params({f"implicit_{k}": v for k, v in asdict(best_implicit).items()})

        # held-out evaluation of the chosen configurations
        explicit_eval = evaluator.explicit(best_explicit)
        implicit_eval = evaluator.implicit(best_implicit)
        explicit_model = fit_als(spark, splits.ranking[0], best_explicit, seed=config.seed,
                                 scale=scale, blocks=config.blocks)
        explicit_ranking = evaluator.rank(factor_scorer(explicit_model, evaluator.catalogue))
        model_metrics = {**implicit_eval.ranking, "rmse": explicit_eval.rmse,
                         "mae": explicit_eval.mae,
                         f"explicit_ndcg_at_{config.k}": explicit_ranking[f"ndcg_at_{config.k}"]}
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

        # the final models, fit on everything
        final_explicit = fit_als(spark, ratings, best_explicit, seed=config.seed, scale=scale,
                                 blocks=config.blocks)
        final_implicit = fit_als(spark, ratings, best_implicit, seed=config.seed, scale=scale,
                                 blocks=config.blocks)
        version = registry.log_and_register(final_explicit, final_implicit, work / "model",
                                            ratings)
        mlflow.log_metric("train_seconds", time.time() - started)

        mlflow.set_tags({"mfy.model_version": version})
        if gate:
            decision = registry.gate(
                settings, version=version, challenger_metrics=model_metrics,
                challenger=(best_explicit, best_implicit), split_id=splits.identity(snapshot),
                evaluate=lambda e, i: {"rmse": evaluator.explicit(e).rmse,
                                       **evaluator.implicit(i).ranking},
                k=config.k, rmse_tolerance=config.rmse_tolerance, snapshot=snapshot,
                run_id=parent.info.run_id,
            )
            mlflow.set_tag("mfy.promoted", str(decision.promoted))
        else:
            decision = registry.Decision(None, "not gated yet", None, model_metrics, None)

    return TrainResult(parent.info.run_id, version, decision.promoted, decision.reason,
                       best_explicit, best_implicit, model_metrics,
                       {n: e.as_metrics() for n, e in baselines.items()}, snapshot)


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: ``spark-submit spark_jobs/train.py [options]``.

    The Airflow DAG submits it this way when ``MFY_SPARK_CONN_ID`` names a
    Spark connection (a cluster); otherwise it calls :func:`train` in-process.
    """
    import argparse

    from moviesforyou.pipeline import train_config

    parser = argparse.ArgumentParser(description="Train and gate the MoviesForYou ALS models.")
    parser.add_argument("--folds", type=Path, help="folder with the official ml-100k folds")
    parser.add_argument("--snapshot", type=Path, help="a kept snapshot folder "
                        "(default: export one from the warehouse)")
    parser.add_argument("--no-gate", action="store_true", help="register only; gate later")
    parser.add_argument("--nightly", metavar="DATE", help="train as the nightly run of DATE "
                        "(ISO 8601) does: tune on MFY_TUNE_DAY or without a champion, else "
                        "re-fit the champion's configuration; never gates (needs --snapshot)")
    parser.add_argument("--config", default="{}", help="TrainConfig overrides as JSON, e.g. "
                        '\'{"explicit": {"rank": 20}}\'')
    args = parser.parse_args(argv)
    if args.nightly and not args.snapshot:
        parser.error("--nightly needs --snapshot")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.nightly:  # what the DAG's in-process train_als task does
        from moviesforyou import pipeline

        out = pipeline.train(Settings.from_env(), {"path": str(args.snapshot)},
                             json.loads(args.config),
                             logical_date=datetime.datetime.fromisoformat(args.nightly))
        print(json.dumps(out, indent=2, default=str))
        return
    config = train_config({**json.loads(args.config),
                           **({"folds_dir": args.folds} if args.folds else {})})
    snapshot = read_kept_snapshot(args.snapshot) if args.snapshot else None
    result = train(Settings.from_env(), config, snapshot=snapshot, gate=not args.no_gate)
    print(json.dumps({"version": result.version, "promoted": result.promoted,
                      "reason": result.reason, "metrics": result.metrics}, indent=2))


if __name__ == "__main__":
    main()
