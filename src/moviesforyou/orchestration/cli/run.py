"""``moviesforyou run``: the nightly DAG once, through Airflow, with a truthful console."""

from __future__ import annotations

import dataclasses
import json
import time

import click
from rich.table import Table

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import MoviesForYouError
from moviesforyou.orchestration.cli import console, main

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
    from moviesforyou.orchestration import airflow_local

    settings = dataclasses.replace(settings, dataset=dataset or settings.dataset,
                                   source=source or settings.source)
    warehouse.ensure(settings)
    # a person is watching: a failure fails its task at once, without Airflow's retries
    run_conf = {"fail_fast": True, **(json.loads(conf) if conf else {})}
    if force:
        run_conf["force"] = True
    watch = airflow_local.TaskWatch()

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

    console.print(f"running the {airflow_local.DAG_ID} DAG once through Airflow "
                  f"(log: {settings.home / 'airflow' / 'last_run.log'})")
    status, log_path, seconds = airflow_local.run_dag(settings, conf=run_conf or None,
                                                      on_line=on_line)
    summary = airflow_local.last_run_summary(settings)
    if summary:
        table = Table(title=f"{airflow_local.DAG_ID}: {summary['state']} in {seconds:.0f} s")
        for column in ("task", "state", "seconds"):
            table.add_column(column)
        for name, info in sorted(summary["tasks"].items(),
                                 key=lambda kv: _order(kv[0])):
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


def _order(task: str) -> int:
    """A task's place in the DAG, for the summary table."""
    from moviesforyou.foundation import names

    return names.NIGHTLY_TASKS.index(task) if task in names.NIGHTLY_TASKS else 99


def _print_next_steps(settings: Settings) -> None:
    from moviesforyou.quality import checks

    console.print(
        "\n[bold]Where to look next[/]\n"
        "  Airflow UI (this run's history):  make airflow      -> http://127.0.0.1:8080\n"
        "  MLflow UI (runs, registry):       make mlflow       -> http://127.0.0.1:5000\n"
        "  API and web page:                 make api          -> http://127.0.0.1:8000 "
        "(OpenAPI: /docs)\n"
        "  recommendations in SQL:           make psql, then: "
        "select * from recs.recommend(1, 10);\n"
        "  dbt docs:                         make dbt-docs     -> http://127.0.0.1:8081\n"
        f"  Great Expectations Data Docs:     {checks.data_docs_index(settings)}\n"
        f"  warehouse: {warehouse.redact(warehouse.url(settings, start=False))}")
