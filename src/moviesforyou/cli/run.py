"""``moviesforyou run``: the nightly DAG once, through Airflow, with a truthful console."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
from rich.table import Table

from moviesforyou import warehouse
from moviesforyou.cli import console, main
from moviesforyou.config import Settings
from moviesforyou.errors import MoviesForYouError

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
    from moviesforyou import names

    return names.NIGHTLY_TASKS.index(task) if task in names.NIGHTLY_TASKS else 99


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


# --------------------------------------------------------------------------- stack


@main.command("stack")
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=".env", show_default=True,
              help="The .env docker compose would read (.env.example, filled in).")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path),
              help="The stack's volumes, PostgreSQL and logs [default: MFY_HOME/stack].")
@click.pass_obj
def stack_command(settings: Settings, env_file: Path, state: Path | None) -> None:
    """docker-compose.yml's services run natively, without Docker, until Ctrl-C.

    The project image's services (airflow-init, the Airflow api-server, scheduler,
    dag-processor and triggerer, MLflow, the API) and Superset (from .venv-superset)
    with compose's own commands and environment, on one PostgreSQL made as the
    warehouse service makes it. Each service's log is in STATE/logs.
    """
    from moviesforyou import stack

    running = stack.LocalStack(state or settings.home / "stack", env_file)
    console.print(f"starting {', '.join(running.services)}; not here: "
                  f"{', '.join(running.skipped())} (other images)")
    with running:
        table = Table(title="the stack, on 127.0.0.1")
        table.add_column("service")
        table.add_column("compose port")
        table.add_column("here")
        for (service, container), port in running.plan.ports.items():
            if service == "warehouse" or service in running.services:
                table.add_row(service, str(container), f"127.0.0.1:{port}")
        console.print(table)
        console.print(f"logs: {running.logs}; Ctrl-C stops every service")
        try:
            while all(p.poll() is None for n, p in running.processes.items()
                      if not running.services[n].oneshot):
                time.sleep(2)
            raise MoviesForYouError(f"a service stopped; see {running.logs}")
        except KeyboardInterrupt:
            console.print("stopping")
