"""The ``moviesforyou`` command line.

Run ``moviesforyou --help`` for the commands. Configuration comes from the
environment (see :mod:`moviesforyou.config`); options override it per call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from moviesforyou import ingest, sources, warehouse
from moviesforyou.config import Settings
from moviesforyou.errors import MoviesForYouError

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


class _Group(click.Group):
    """Prints our own errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MoviesForYouError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """MoviesForYou: nightly movie recommendations from MovieLens.

    Configuration is read from MFY_* environment variables; see README.md.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    ctx.obj = Settings.from_env()


# --------------------------------------------------------------------------- warehouse


@main.group("warehouse")
def warehouse_group() -> None:
    """Start, stop and inspect the warehouse (embedded unless MFY_WAREHOUSE_URL is set)."""


@warehouse_group.command("start")
@click.pass_obj
def warehouse_start(settings: Settings) -> None:
    """Start the embedded PostgreSQL and create roles and schemas."""
    dsn = warehouse.ensure(settings)
    console.print(f"warehouse ready: {warehouse.redact(dsn)}")


@warehouse_group.command("stop")
@click.pass_obj
def warehouse_stop(settings: Settings) -> None:
    """Stop the embedded PostgreSQL."""
    if settings.warehouse_url:
        raise click.UsageError("MFY_WAREHOUSE_URL is set: that server is not ours to stop")
    stopped = warehouse.embedded(settings).stop()
    console.print("stopped" if stopped else "not running")


@warehouse_group.command("status")
@click.pass_obj
def warehouse_status(settings: Settings) -> None:
    """Where the warehouse is and whether it runs."""
    for key, value in warehouse.describe(settings).items():
        click.echo(f"{key:>10}: {value}")


@warehouse_group.command("url")
@click.option("--reader", is_flag=True, help="The read-only role's URL instead of the owner's.")
@click.pass_obj
def warehouse_url(settings: Settings, reader: bool) -> None:
    """Print the libpq URL alone on the last line (starts the embedded server if needed)."""
    dsn = warehouse.ensure(settings)
    click.echo(warehouse.reader_url(settings) if reader else dsn)


@warehouse_group.command("psql", context_settings={"ignore_unknown_options": True})
@click.option("--reader", is_flag=True, help="Connect as the read-only role.")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def warehouse_psql(settings: Settings, reader: bool, psql_args: tuple[str, ...]) -> None:
    """Open psql on the warehouse; extra arguments go to psql."""
    dsn = warehouse.ensure(settings)
    argv = warehouse.psql_command(settings, warehouse.reader_url(settings) if reader else dsn)
    os.execv(argv[0], [*argv, *psql_args])


# --------------------------------------------------------------------------- ingest


@contextmanager
def _opened_release(settings: Settings, dataset: str, source: str | None, sha256: str | None):
    with _progress() as bars:
        task = bars.add_task(f"download {dataset}", total=None, visible=False)

        def on_bytes(done: int, total: int | None) -> None:
            bars.update(task, completed=done, total=total, visible=True)

        files = sources.open_release(settings, dataset, source, sha256, on_bytes=on_bytes)
    try:
        yield files
    finally:
        files.close()


def _ingest(settings: Settings, dataset: str, source: str | None, sha256: str | None,
            force: bool) -> ingest.LoadResult:
    dsn = warehouse.ensure(settings)
    with _opened_release(settings, dataset, source, sha256) as files:
        conn = warehouse.connect(settings, dsn=dsn)
        try:
            with _progress() as bars:
                tasks: dict[str, int] = {}

                def on_file(table: str, name: str, done: int, size: int) -> None:
                    if table not in tasks:
                        tasks[table] = bars.add_task(f"raw.{table:<12}", total=size)
                    bars.update(tasks[table], completed=done)

                return ingest.load_release(conn, files, dataset, force=force, progress=on_file)
        finally:
            conn.close()


@main.command("ingest")
@click.option("--dataset", "-d", help="Release name: ml-100k, ml-1m, ml-latest-small, ml-25m, "
              "ml-32m, or any name for a local source. [default: MFY_DATASET or ml-100k]")
@click.option("--source", "-s", help="URL, zip or folder instead of the GroupLens URL. "
              "[default: MFY_SOURCE]")
@click.option("--sha256", help="Pinned SHA-256 of the zip. [default: MFY_SOURCE_SHA256, "
              "else GroupLens' published MD5]")
@click.option("--force", is_flag=True, help="Reload even if the files are unchanged.")
@click.pass_obj
def ingest_command(settings: Settings, dataset: str | None, source: str | None,
                   sha256: str | None, force: bool) -> None:
    """Download (or open) a MovieLens release and load it into the raw schema."""
    result = _ingest(settings, dataset or settings.dataset, source or settings.source,
                     sha256 or settings.source_sha256, force)
    _print_load(result)


def _counts_table(title: str, schema: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column(f"{schema} table")
    table.add_column("rows", justify="right")
    for name, count in counts.items():
        table.add_row(f"{schema}.{name}", f"{count:,}")
    return table


def _print_load(result: ingest.LoadResult) -> None:
    if result.status == "unchanged":
        console.print(f"[yellow]{result.dataset} unchanged[/] since the last load: nothing to do "
                      f"(ledger entry {result.load_id}; --force reloads)")
        return
    console.print(_counts_table(
        f"{result.dataset}: load {result.load_id} in {result.duration_s:.1f} s", "raw",
        result.row_counts))


@main.command("loads")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def loads_command(settings: Settings, limit: int) -> None:
    """Show the load ledger (ops.source_loads), newest first."""
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            rows = list(ingest.iter_ledger(cur, limit))
    finally:
        conn.close()
    table = Table(title="ops.source_loads")
    for column in ("load", "dataset", "status", "at (UTC)", "ratings", "source / error"):
        table.add_column(column)
    for load_id, dataset, status, at, ratings, source, error in rows:
        table.add_row(str(load_id), dataset, status, f"{at:%Y-%m-%d %H:%M:%S}", ratings or "",
                      error or source)
    console.print(table)


# --------------------------------------------------------------------------- dbt


@main.command("transform")
@click.option("--full-refresh", is_flag=True, help="Rebuild incremental models from scratch.")
@click.option("--select", "-s", help="dbt node selection, e.g. 'marts' or '+dim_movies'.")
@click.option("--no-docs", is_flag=True, help="Skip dbt docs generate.")
@click.pass_obj
def transform_command(settings: Settings, full_refresh: bool, select: str | None,
                      no_docs: bool) -> None:
    """dbt build (models, unit and data tests), source freshness and dbt docs."""
    from moviesforyou import transform

    summary = transform.transform(settings, full_refresh=full_refresh, select=select,
                                  docs=not no_docs)
    _print_transform(summary)


def _print_transform(summary) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.build.counts().items()))
    console.print(f"[green]dbt build passed[/]: {counts}")
    slowest = sorted(summary.model_seconds().items(), key=lambda kv: -kv[1])[:5]
    console.print("slowest models: " + ", ".join(
        f"{uid.rsplit('.', 1)[-1]} {sec:.1f}s" for uid, sec in slowest))
    if summary.docs_path.exists():
        console.print(f"docs: {summary.docs_path} (serve with: uv run moviesforyou docs)")


@main.command("dbt", context_settings={"ignore_unknown_options": True,
                                       "allow_extra_args": True})
@click.argument("dbt_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def dbt_command(settings: Settings, dbt_args: tuple[str, ...]) -> None:
    """Any dbt command against the warehouse, e.g. `moviesforyou dbt test -s dim_users`."""
    from moviesforyou import transform

    if not dbt_args:
        raise click.UsageError("give a dbt command, e.g. `moviesforyou dbt ls`")
    warehouse.ensure(settings)
    run = transform.run_dbt(settings, list(dbt_args), check=False)
    sys.exit(0 if run.success else 1)


@main.command("docs")
@click.option("--port", default=8081, show_default=True)
@click.pass_obj
def docs_command(settings: Settings, port: int) -> None:
    """Serve the dbt docs site (generated by `transform`) on http://127.0.0.1:PORT."""
    from moviesforyou import transform

    if not (transform.target_dir(settings) / "index.html").exists():
        transform.run_dbt(settings, ["docs", "generate"])
    transform.run_dbt(settings, ["docs", "serve", "--port", str(port), "--host", "127.0.0.1",
                                 "--no-browser"])


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
    from spark_jobs.train import TrainConfig, train

    config = TrainConfig(folds_dir=folds, seed=seed)
    if quick:
        config.explicit_grid = {"rank": [50], "reg_param": [0.15], "max_iter": [10]}
        config.implicit_grid = {"rank": [64], "reg_param": [0.5], "alpha": [4.0],
                                "max_iter": [10]}
    return train(settings, config)


def _print_train(result) -> None:
    table = Table(title=f"model version {result.version}: "
                        f"{'promoted to champion' if result.promoted else 'not promoted'}")
    table.add_column("metric")
    table.add_column("ALS", justify="right")
    for name in result.baselines:
        table.add_column(name, justify="right")
    for metric in ("rmse", "mae", "ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10",
                   "coverage_at_10", "novelty_at_10", "popularity_bias_at_10"):
        cells = [result.metrics.get(metric)] + [b.get(metric) for b in result.baselines.values()]
        table.add_row(metric, *("" if v is None else f"{v:.4f}" for v in cells))
    console.print(table)
    console.print(f"gate: {result.reason}")
    console.print(f"explicit: {result.explicit.label()}; implicit: {result.implicit.label()}")


@main.group("models")
def models_group() -> None:
    """The registered model: champion history, rollback, factor export."""


@models_group.command("history")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def models_history(settings: Settings, limit: int) -> None:
    """Champion decisions from ops.model_promotions, newest first."""
    from spark_jobs import registry

    table = Table(title=f"{registry.model_name()}: champion history")
    for column in ("#", "at (UTC)", "action", "challenger", "champion before", "after",
                   "promoted", "reason"):
        table.add_column(column)
    for pid, at, action, challenger, before, after, promoted, reason in registry.history(
            settings, limit):
        table.add_row(str(pid), f"{at:%Y-%m-%d %H:%M}", action, challenger or "", before or "",
                      after or "", "yes" if promoted else "no", reason)
    console.print(table)


@models_group.command("rollback")
@click.argument("version")
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_obj
def models_rollback(settings: Settings, version: str, reason: str) -> None:
    """Make VERSION the champion again."""
    from spark_jobs import registry

    before = registry.rollback(settings, version, reason)
    console.print(f"champion: v{before} -> v{version}")


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
    from moviesforyou import publish

    with console.status("scoring the champion and publishing the recs tables"):
        return publish.publish(settings)


def _print_publish(result) -> None:
    console.print(_counts_table(
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
    from moviesforyou import publish

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
    from moviesforyou import publish

    target, lock_ms = publish.rollback(settings, publish_id)
    console.print(f"publish {target} is live again (swap held its locks {lock_ms:.1f} ms)")


@main.command("validate")
@click.argument("layer", type=click.Choice(["raw", "marts", "recs"]))
@click.pass_obj
def validate_command(settings: Settings, layer: str) -> None:
    """Run a layer's Great Expectations suites and update the Data Docs."""
    from moviesforyou import quality

    report = quality.validate(settings, layer)
    console.print(f"{layer}: {report.evaluated} expectations passed in {report.seconds:.1f} s; "
                  f"Data Docs: {report.docs}")


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.pass_obj
def serve_command(settings: Settings, host: str, port: int, workers: int) -> None:
    """Run the API and web page (connects as the read-only role)."""
    import uvicorn

    os.environ.setdefault("MFY_API_DATABASE_URL", warehouse.reader_url(settings))
    os.environ.setdefault("MFY_DATASET", settings.dataset)
    uvicorn.run("serving.app:app", host=host, port=port, workers=workers,
                log_level="warning", access_log=False)


# --------------------------------------------------------------------------- synth


@main.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--ratings", "-n", default=100_000, show_default=True, type=int,
              help="Number of ratings.")
@click.option("--layout", type=click.Choice(["100k", "1m", "csv"]), default="100k",
              show_default=True)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--users", type=int, help="Number of users [default: scaled like MovieLens].")
@click.option("--movies", type=int, help="Number of movies [default: scaled like MovieLens].")
def synth_command(out: Path, ratings: int, layout: str, seed: int, users: int | None,
                  movies: int | None) -> None:
    """Write a seeded synthetic MovieLens-format release to OUT."""
    from moviesforyou import synth

    spec = synth.SynthSpec(n_ratings=ratings, n_users=users, n_movies=movies, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bars:
        task = bars.add_task("synth ratings", total=ratings)
        summary = synth.generate(out, spec, layout=layout,
                                 progress=lambda done: bars.update(task, completed=done))
    console.print(f"wrote {summary.n_ratings:,} ratings by {summary.n_users:,} users on "
                  f"{summary.n_movies:,} movies to {out} ({layout} layout)")


# --------------------------------------------------------------------------- run


@main.command("run")
@click.option("--dataset", "-d", help="Release name [default: MFY_DATASET or ml-100k].")
@click.option("--source", "-s", help="URL, zip or folder instead of the GroupLens URL "
              "[default: MFY_SOURCE].")
@click.option("--force", is_flag=True, help="Retrain and republish even if nothing changed.")
@click.option("--conf", help="The DAG run's conf as JSON, e.g. '{\"train\": {...}}'.")
@click.pass_obj
def run_command(settings: Settings, dataset: str | None, source: str | None, force: bool,
                conf: str | None) -> None:
    """The nightly job: the movielens_nightly Airflow DAG, run once (`airflow dags test`).

    Ingest, validate, dbt build, validate, train, gate, score, validate and publish,
    with a project-local Airflow home; then where to look next.
    """
    from moviesforyou import orchestration

    settings = dataclasses.replace(settings, dataset=dataset or settings.dataset,
                                   source=source or settings.source)
    warehouse.ensure(settings)
    # a person is watching: a failure fails its task at once, without Airflow's retries
    run_conf = {"fail_fast": True, **(json.loads(conf) if conf else {})}
    if force:
        run_conf["force"] = True
    watch = orchestration.TaskWatch()

    def on_line(line: str) -> None:
        event = watch.feed(line)
        if event is None:
            return
        kind, task, seconds = event
        stamp = f"[dim]{time.strftime('%H:%M:%S')}[/]"
        if kind == "start":
            console.print(f"{stamp} {task} ...")
        elif kind == "failed":
            console.print(f"{stamp} [red]{task} failed[/] ({seconds:.1f} s)")
        else:
            console.print(f"{stamp} {task} done ({seconds:.1f} s)")

    console.print(f"running the {orchestration.DAG_ID} DAG once through Airflow "
                  f"(log: {settings.home / 'airflow' / 'last_run.log'})")
    status, log_path, seconds = orchestration.run_dag(settings, conf=run_conf or None,
                                                      on_line=on_line)
    summary = orchestration.last_run_summary(settings)
    if summary:
        table = Table(title=f"{orchestration.DAG_ID}: {summary['state']} in {seconds:.0f} s")
        for column in ("task", "state", "seconds"):
            table.add_column(column)
        for name, info in sorted(summary["tasks"].items(),
                                 key=lambda kv: _TASK_ORDER.get(kv[0], 99)):
            table.add_row(name, info["state"] or "", f"{info['seconds'] or 0:.1f}")
        console.print(table)
        console.print(f"source: {summary['source_status']}; trained: {summary['trained']}; "
                      f"promoted: {summary['promoted']}; published: {summary['published']}")
        if summary["note"]:
            console.print(summary["note"])
    errors = (summary or {}).get("errors") or watch.errors
    note = (summary or {}).get("note") or ""
    for task, message in errors.items():
        if message.splitlines()[0] not in note:  # the note has the first failure's
            console.print(f"[red]{task} failed:[/] {message}", highlight=False)
    if status:
        raise MoviesForYouError(f"the DAG run failed (exit {status}); its log: {log_path}")
    _print_next_steps(settings)


#: Task order in the DAG, for the summary table.
_TASK_ORDER = {name: i for i, name in enumerate((
    "extract_source", "validate_raw", "check_changes", "build_marts", "validate_marts",
    "export_snapshot", "train_als", "gate_model", "score_recs", "validate_recs", "publish_recs",
    "write_summary"))}


def _print_next_steps(settings: Settings) -> None:
    from moviesforyou import quality

    console.print(
        "\n[bold]Where to look next[/]\n"
        "  Airflow UI (this run's history):  make airflow      -> http://127.0.0.1:8080\n"
        "  MLflow UI (runs, registry):       make mlflow       -> http://127.0.0.1:5000\n"
        "  API and web page:                 make api          -> http://127.0.0.1:8000 "
        "(OpenAPI: /docs)\n"
        "  recommendations in SQL:           make psql, then: "
        "select * from recs.recommend(1, 10);\n"
        "  dbt docs:                         make dbt-docs     -> http://127.0.0.1:8081\n"
        f"  Great Expectations Data Docs:     {quality.data_docs_index(settings)}\n"
        f"  warehouse: {warehouse.redact(warehouse.url(settings, start=False))}")


if __name__ == "__main__":
    main()
