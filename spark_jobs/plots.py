"""The plots a training run logs under ``plots/``: tuning curves, predicted against
actual ratings, and the model against its baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spark_jobs.evaluation import Evaluation


def write_plots(folder: Path, explicit_results, implicit_results, predicted, actual,
                model_eval: dict[str, float], baselines: dict[str, Evaluation], k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    explicit_results = [(p, s) for p, s in explicit_results if p.family == "als"]
    for reg in sorted({p.reg_param for p, _ in explicit_results}):
        pts = sorted((p.rank, s) for p, s in explicit_results if p.reg_param == reg)
        axes[0].plot(*zip(*pts, strict=True), marker="o", label=f"regParam {reg:g}")
    axes[0].set(title="Explicit ALS: validation RMSE", xlabel="rank", ylabel="RMSE")
    if axes[0].lines:
        axes[0].legend()
    als = [(p, s) for p, s in implicit_results if p.family == "als"]
    for alpha in sorted({p.alpha for p, _ in als}):
        pts = sorted((p.rank, s) for p, s in als if p.alpha == alpha)
        axes[1].plot(*zip(*pts, strict=True), marker="o", label=f"ALS alpha {alpha:g}")
    for params, score in implicit_results:  # the other list families: one line each
        if params.family != "als":
            axes[1].axhline(score, linestyle="--", color="grey", linewidth=0.8)
            axes[1].annotate(params.label(), (0.01, score), xycoords=("axes fraction", "data"),
                             fontsize=7, va="bottom")
    axes[1].set(title=f"Lists: validation NDCG@{k}", xlabel="ALS rank", ylabel="NDCG")
    if axes[1].get_legend_handles_labels()[0]:
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
