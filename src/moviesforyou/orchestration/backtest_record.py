"""The record of a backtest (:mod:`moviesforyou.orchestration.backtest`): its plot, and
its runs in the MLflow experiment ``moviesforyou-backtest``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration.backtest import Night

EXPERIMENT = "moviesforyou-backtest"


def plot(results: list[Night], out: Path) -> Path:
    """Hit rate at 10 and NDCG@10 by night, one line per arm (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for arm in dict.fromkeys(r.arm for r in results):
        rows = [r for r in results if r.arm == arm]
        for axis, field in zip(axes, ("hit_rate_10", "ndcg_10"), strict=True):
            axis.plot([r.night for r in rows], [getattr(r, field) for r in rows], marker="o",
                      label=arm)
    for axis, title in zip(axes, ("hit rate at 10", "NDCG@10 of liked films"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("night")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def log_to_mlflow(settings: Settings, results: list[Night], params: dict,
                  figure: Path) -> list[str]:
    """One MLflow run per arm in the ``moviesforyou-backtest`` experiment of the caller's
    tracking store: the nights as steps, the table and the plot as artifacts."""
    import mlflow

    from spark_jobs import registry

    client = registry.configure(settings)  # the caller's store, as training uses it
    if client.get_experiment_by_name(EXPERIMENT) is None:
        local = registry.tracking_uri(settings).startswith("sqlite:///")
        client.create_experiment(EXPERIMENT, artifact_location=(
            (settings.home / "mlflow" / "artifacts").as_uri() if local else None))
    mlflow.set_experiment(EXPERIMENT)
    run_ids = []
    for arm in dict.fromkeys(r.arm for r in results):
        rows = [r for r in results if r.arm == arm]
        with mlflow.start_run(run_name=f"{params['dataset']} {arm}") as run:
            mlflow.log_params({**params, "arm": arm})
            for r in rows:
                mlflow.log_metrics({k: v for k, v in (
                    ("hit_rate_10", r.hit_rate_10), ("ndcg_10", r.ndcg_10),
                    ("coverage", r.coverage), ("viewers", r.viewers),
                    ("seconds", r.seconds)) if v is not None}, step=r.night)
            mlflow.log_dict([{**dataclasses.asdict(r), "day": r.day.isoformat()} for r in rows],
                            "nights.json")
            mlflow.log_artifact(str(figure))
            run_ids.append(run.info.run_id)
    return run_ids
