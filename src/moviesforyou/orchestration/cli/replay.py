"""``moviesforyou backtest``: a replay of a release's own later history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from pathlib import Path

import click

from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration.cli import console, main


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@main.command("backtest")
@click.option("--dataset", "-d", help="Release name [default: MFY_DATASET or ml-100k].")
@click.option("--source", "-s", required=True, type=click.Path(exists=True, path_type=Path),
              help="The release as a zip or a folder (never downloaded).")
@click.option("--nights", "-n", type=int, default=30, show_default=True,
              help="Days replayed after the cut.")
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="First replayed day (UTC) [default: the release's last NIGHTS days].")
@click.option("--arms", default="refresh", show_default=True,
              help="Comma-separated policies: refresh, refit, frozen, experiment.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Where the plot goes [default: MFY_HOME/backtests/<dataset>-<time>.png].")
@click.option("--keep", type=click.Path(path_type=Path),
              help="Keep the throw-away homes in this folder (to look at afterwards).")
@click.pass_obj
def backtest_command(settings: Settings, dataset: str | None, source: Path, nights: int,
                     start: dt.datetime | None, arms: str, plot_path: Path | None,
                     keep: Path | None) -> None:
    """Replay a release's last NIGHTS days: cut it, publish, then each day the day's
    viewers ask the API for their lists, are judged against what they rated, their
    ratings go in, and the nightly DAG runs (per arm). Prints a table per night, logs
    it to the MLflow experiment moviesforyou-backtest and plots it.

    Each arm runs in a throw-away home of its own. The pipelines there get the
    training and weekday settings of this environment (MFY_TRAIN_CONF, MFY_TUNE_DAY,
    MFY_DBT_REBUILD_DAY, MFY_REFIT, MFY_RECS_N), and nothing else of it.
    """
    from moviesforyou.orchestration import backtest, backtest_record

    dataset = dataset or settings.dataset
    extra = {name: value for name, value in settings.to_env().items()
             if name in ("MFY_TRAIN_CONF", "MFY_TUNE_DAY", "MFY_DBT_REBUILD_DAY", "MFY_REFIT",
                         "MFY_RECS_N", "MFY_SPARK_DRIVER_MEMORY")}
    chosen = tuple(a.strip() for a in arms.split(",") if a.strip())

    stamp = time.strftime("%Y%m%d-%H%M%S")
    figure = plot_path or settings.home / "backtests" / f"{dataset}-{stamp}.png"
    record = figure.with_suffix(".json")  # rewritten each night: a long replay that dies
    record.parent.mkdir(parents=True, exist_ok=True)  # keeps the nights it finished
    done: list[backtest.Night] = []

    def on_night(n: backtest.Night) -> None:
        done.append(n)
        record.write_text(json.dumps(
            [{**dataclasses.asdict(r), "day": r.day.isoformat()} for r in done], indent=1))
        console.print(f"{n.arm} night {n.night} ({n.day}): {n.viewers} viewers, hit rate at "
                      f"10 {_fmt(n.hit_rate_10)}, NDCG@10 {_fmt(n.ndcg_10)}, "
                      f"v{n.model_version}, {n.seconds:.0f} s")

    started = time.time()
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    results = backtest.backtest(dataset, source, nights,
                                start=start.date() if start else None, arms=chosen,
                                work=keep, extra=extra, on_night=on_night)
    # plain columns: the table is read in logs and narrow terminals as often as not
    header = (f"{'arm':8} {'night':>5} {'day':10} {'viewers':>7} {'hit@10':>6} "
              f"{'NDCG@10':>7} {'coverage':>8} {'model':>5} {'family':10} {'seconds':>7}")
    lines = [f"backtest of {dataset}: {nights} night(s), {time.time() - started:.0f} s", header]
    for r in results:
        lines.append(f"{r.arm:8} {r.night:>5} {r.day.isoformat():10} {r.viewers:>7} "
                     f"{_fmt(r.hit_rate_10):>6} {_fmt(r.ndcg_10):>7} {_fmt(r.coverage):>8} "
                     f"{r.model_version or '':>5} {r.family or '':10} {r.seconds:>7.0f}")
    click.echo("\n".join(lines))
    backtest_record.plot(results, figure)
    runs = backtest_record.log_to_mlflow(settings, results, {
        "dataset": dataset, "source": str(source), "nights": nights,
        "start": results[0].day.isoformat() if results else "", **extra}, figure)
    console.print(f"plot: {figure}; table: {record}; MLflow runs {', '.join(runs)} in "
                  f"experiment {backtest_record.EXPERIMENT}")
