"""Commands on the models and what they serve: training, the registry, publishing, the API."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.table import Table

from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration.cli import console, counts_table, main

# --------------------------------------------------------------------------- train


@main.command("train")
@click.option("--folds", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the official ml-100k folds (u1-u5, ua) to evaluate on.")
@click.option("--quick", is_flag=True, help="A small tuning grid, for a fast run.")
@click.option("--seed", default=42, show_default=True)
@click.pass_obj
def train_command(settings: Settings, folds: Path | None, quick: bool, seed: int) -> None:
    """Tune, evaluate and register ALS in MLflow, then run the champion gate."""
    result = _train(settings, folds, quick, seed)
    _print_train(result)


def _train(settings: Settings, folds: Path | None, quick: bool, seed: int):
    from moviesforyou.orchestration.training import train_and_gate
    from spark_jobs.config import TrainConfig

    config = TrainConfig(folds_dir=folds, seed=seed)
    if quick:
        config.explicit_grid = {"rank": [50], "reg_param": [0.15], "max_iter": [10]}
        config.implicit_grid = {"rank": [64], "reg_param": [0.5], "alpha": [4.0],
                                "max_iter": [10]}
    return train_and_gate(settings, config)


def _print_train(result) -> None:
    table = Table(title=f"model version {result.version}: "
                        f"{'promoted to champion' if result.promoted else 'not promoted'}")
    table.add_column("metric")
    table.add_column("model", justify="right")
    for name in result.baselines:
        table.add_column(name, justify="right")
    for metric in ("rmse", "mae", "ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10",
                   "coverage_at_10", "novelty_at_10", "popularity_bias_at_10"):
        cells = [result.metrics.get(metric)] + [b.get(metric) for b in result.baselines.values()]
        table.add_row(metric, *("" if v is None else f"{v:.4f}" for v in cells))
    console.print(table)
    console.print(f"gate: {result.reason}")
    console.print(f"ratings: {result.explicit.label()}; lists: {result.implicit.label()}")


@main.group("models")
def models_group() -> None:
    """The registered model: champion history, rollback, factor export."""


@models_group.command("history")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def models_history(settings: Settings, limit: int) -> None:
    """Champion decisions from ops.model_promotions, newest first."""
    from moviesforyou.orchestration import ledger
    from spark_jobs import registry

    table = Table(title=f"{registry.model_name(settings)}: champion history")
    for column in ("#", "at (UTC)", "action", "challenger", "families", "champion before",
                   "after", "promoted", "reason"):
        table.add_column(column)
    rows = ledger.history(settings, limit)
    family = registry.families(settings, [row[3] or row[5] for row in rows])
    for pid, at, action, challenger, before, after, promoted, reason in rows:
        table.add_row(str(pid), f"{at:%Y-%m-%d %H:%M}", action, challenger or "",
                      family.get(challenger or after or "", ""), before or "", after or "",
                      "yes" if promoted else "no", reason)
    console.print(table)


@models_group.command("rollback")
@click.argument("version")
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_obj
def models_rollback(settings: Settings, version: str, reason: str) -> None:
    """Make VERSION the champion again."""
    from moviesforyou.orchestration.training import rollback

    before = rollback(settings, version, reason)
    console.print(f"champion: v{before} -> v{version}")


@models_group.group("experiment", invoke_without_command=True)
@click.option("--alpha", default=0.05, show_default=True, help="Significance level.")
@click.pass_context
def models_experiment(ctx: click.Context, alpha: float) -> None:
    """Champion against challenger, live (MFY_CHALLENGER_SHARE): the running experiment
    (else the last), its arms, the figures so far and whether the difference is
    significant."""
    if ctx.invoked_subcommand is None:
        from moviesforyou.orchestration import experiment

        _print_experiment(experiment.status(ctx.obj, alpha))


def _print_experiment(found) -> None:
    run = found.experiment
    if run is None:
        console.print(found.verdict)
        return
    state = ("running" if run.ended_at is None
             else f"ended {run.ended_at:%Y-%m-%d %H:%M} ({run.outcome})")
    console.print(f"experiment {run.name}: {state}; challenger v{run.challenger_version} for "
                  f"{run.share:.1%} of viewers, since {run.started_at:%Y-%m-%d %H:%M} UTC")
    table = Table(title="arms")
    for column in ("arm", "model versions", "viewer-days", "hit rate at 10", "hit rate at 50",
                   "liked hit rate at 10", "days"):
        table.add_column(column)
    for arm in ("champion", "challenger"):
        row = found.figures.get(arm)
        if not row:
            table.add_row(arm, "", "0", "", "", "", "")
            continue
        viewers = row["viewers"] or 0

        def share(count, viewers=viewers) -> str:
            return f"{count / viewers:.4f}" if viewers else ""

        table.add_row(arm, row["model_versions"], f"{viewers:,}", share(row["hits_10"]),
                      share(row["hits_50"]), share(row["liked_hits_10"]),
                      f"{row['first_day']} to {row['last_day']}")
    console.print(table)
    console.print(f"test: {found.verdict}")


@models_experiment.command("promote")
@click.option("--alpha", default=0.05, show_default=True, help="Significance level.")
@click.option("--force", is_flag=True, help="Promote without a significant win.")
@click.pass_obj
def models_experiment_promote(settings: Settings, alpha: float, force: bool) -> None:
    """Make the running experiment's challenger the champion if it won live, record it in
    the ledger and end the experiment; the next publish serves it to everyone."""
    from moviesforyou.orchestration import experiment

    found = experiment.promote(settings, alpha=alpha, force=force)
    console.print(f"v{found.experiment.challenger_version} is the champion: {found.verdict}")


@models_experiment.command("stop")
@click.option("--reason", default="stopped by hand", show_default=True)
@click.pass_obj
def models_experiment_stop(settings: Settings, reason: str) -> None:
    """End the running experiment; the next publish serves everyone the champion."""
    from moviesforyou.orchestration import experiment

    stopped = experiment.stop(settings, reason)
    console.print(f"experiment {stopped.name} stopped")


@models_group.command("export")
@click.pass_obj
def models_export(settings: Settings) -> None:
    """Download the champion's factors for publishing (to $MFY_HOME/models)."""
    from spark_jobs import registry

    console.print(f"champion factors in {registry.export_champion(settings)}")


@main.command("mlflow-ui")
@click.option("--port", default=5000, show_default=True)
@click.pass_obj
def mlflow_ui(settings: Settings, port: int) -> None:
    """Start the MLflow UI on the tracking store (http://127.0.0.1:PORT)."""
    from spark_jobs import registry

    uri = registry.tracking_uri(settings)
    registry.configure(settings)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--registry-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)])


# --------------------------------------------------------------------------- publish and serve


@main.command("publish")
@click.pass_obj
def publish_command(settings: Settings) -> None:
    """Score the champion, validate the recs tables and swap them in atomically."""
    _print_publish(_publish(settings))


def _publish(settings: Settings):
    from moviesforyou.orchestration import recs_publish

    with console.status("scoring the champion and publishing the recs tables"):
        return recs_publish.publish(settings)


def _print_publish(result) -> None:
    console.print(counts_table(
        f"publish {result.publish_id}: model v{result.model_version} is live", "recs",
        result.row_counts))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    console.print(f"steps: {steps}; the swap held its locks {result.swap_lock_ms:.1f} ms")


@main.group("recs")
def recs_group() -> None:
    """The published recommendation tables: versions and rollback."""


@recs_group.command("versions")
@click.pass_obj
def recs_versions(settings: Settings) -> None:
    """The live version and the ones kept for rollback."""
    from moviesforyou.publishing import publish

    table = Table(title="recs versions")
    for column in ("publish", "", "model version", "went live (UTC)", "user recommendations"):
        table.add_column(column)
    for pid, where, version, at, counts in publish.versions(settings):
        table.add_row(str(pid), where, version or "", f"{at:%Y-%m-%d %H:%M:%S}" if at else "",
                      f"{(counts or {}).get('user_recommendations', 0):,}")
    console.print(table)


@recs_group.command("rollback")
@click.argument("publish_id", required=False, type=int)
@click.pass_obj
def recs_rollback(settings: Settings, publish_id: int | None) -> None:
    """Make a kept version live again (default: the newest kept one)."""
    from moviesforyou.publishing import publish

    target, lock_ms = publish.rollback(settings, publish_id)
    console.print(f"publish {target} is live again (swap held its locks {lock_ms:.1f} ms)")


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.pass_obj
def serve_command(settings: Settings, host: str, port: int, workers: int) -> None:
    """Run the API and web page (connects as the read-only role)."""
    from serving import db

    # uvicorn, in place of this process, with the environment given explicitly
    env = db.api_environment(settings)
    os.execvpe(sys.executable, [
        sys.executable, "-m", "uvicorn", "serving.app:app", "--host", host, "--port", str(port),
        "--workers", str(workers), "--log-level", "warning", "--no-access-log"], env)
