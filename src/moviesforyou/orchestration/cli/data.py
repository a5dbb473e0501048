"""Commands on the data: the warehouse, ingest, dbt, the quality suites, synthetic data."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.ingestion import ingest, sources
from moviesforyou.orchestration.cli import _progress, console, counts_table, main

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
            force: bool, validate: bool = True) -> ingest.LoadResult:
    """Write, audit (unless told not to) and publish a release, as one writer."""
    warehouse.ensure(settings)
    with warehouse.writer_lock(settings, "ingest") as conn:
        with _opened_release(settings, dataset, source, sha256) as files, _progress() as bars:
            tasks: dict[str, int] = {}

            def on_file(table: str, name: str, done: int, size: int) -> None:
                if table not in tasks:
                    tasks[table] = bars.add_task(f"raw.{table:<12}", total=size)
                bars.update(tasks[table], completed=done)

            staged = ingest.stage_release(conn, files, dataset, force=force, progress=on_file)
        if staged.status != "staged":
            return staged
        audit = None
        if validate:
            from moviesforyou.quality import checks

            console.print(f"auditing load {staged.load_id} in {staged.schema} (raw suite)")
            audit = checks.audit_load(settings)
        return ingest.publish_staged(conn, staged, audit)


@main.command("ingest")
@click.option("--dataset", "-d", help="Release name: ml-100k, ml-1m, ml-latest-small, ml-25m, "
              "ml-32m, or any name for a local source. [default: MFY_DATASET or ml-100k]")
@click.option("--source", "-s", help="URL, zip or folder instead of the GroupLens URL. "
              "[default: MFY_SOURCE]")
@click.option("--sha256", help="Pinned SHA-256 of the zip. [default: MFY_SOURCE_SHA256, "
              "else GroupLens' published MD5]")
@click.option("--force", is_flag=True, help="Reload even if the files are unchanged.")
@click.option("--no-validate", is_flag=True,
              help="Make the load live without running the raw suite on it first.")
@click.pass_obj
def ingest_command(settings: Settings, dataset: str | None, source: str | None,
                   sha256: str | None, force: bool, no_validate: bool) -> None:
    """Download (or open) a MovieLens release and load it into the raw schema.

    The release is written beside the live one, audited by the raw Great
    Expectations suite, and only then swapped in; a load that fails the suite is
    kept in raw_rejected__<dataset> and the live release stays.
    """
    result = _ingest(settings, dataset or settings.dataset, source or settings.source,
                     sha256 or settings.source_sha256, force, validate=not no_validate)
    _print_load(result)


def _print_load(result: ingest.LoadResult) -> None:
    if result.status == "unchanged":
        console.print(f"[yellow]{result.dataset} unchanged[/] since the last load: nothing to do "
                      f"(ledger entry {result.load_id}; --force reloads)")
        return
    console.print(counts_table(
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
    from moviesforyou.transformation import transform

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
    from moviesforyou.transformation import transform

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
    from moviesforyou.transformation import transform

    if not (transform.target_dir(settings) / "index.html").exists():
        transform.run_dbt(settings, ["docs", "generate"])
    transform.run_dbt(settings, ["docs", "serve", "--port", str(port), "--host", "127.0.0.1",
                                 "--no-browser"])


@main.command("validate")
@click.argument("layer", type=click.Choice(["raw", "marts", "recs"]))
@click.pass_obj
def validate_command(settings: Settings, layer: str) -> None:
    """Run a layer's Great Expectations suites and update the Data Docs."""
    from moviesforyou.quality import checks

    report = checks.validate(settings, layer)
    console.print(f"{layer}: {report.evaluated} expectations passed in {report.seconds:.1f} s; "
                  f"Data Docs: {report.docs}")


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
    from moviesforyou.ingestion import synth

    spec = synth.SynthSpec(n_ratings=ratings, n_users=users, n_movies=movies, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bars:
        task = bars.add_task("synth ratings", total=ratings)
        summary = synth.generate(out, spec, layout=layout,
                                 progress=lambda done: bars.update(task, completed=done))
    console.print(f"wrote {summary.n_ratings:,} ratings by {summary.n_users:,} users on "
                  f"{summary.n_movies:,} movies to {out} ({layout} layout)")
