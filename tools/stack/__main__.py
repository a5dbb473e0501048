"""``python -m stack --env-file .env`` (``make stack-local``)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from stack.compose import StackError
from stack.running import LocalStack


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=".env", show_default=True,
              help="The .env docker compose would read (.env.example, filled in).")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path),
              help="The stack's volumes, PostgreSQL and logs [default: MFY_HOME/stack].")
def main(env_file: Path, state: Path | None) -> None:
    """docker-compose.yml's services run natively, without Docker, until Ctrl-C.

    The project image's services (airflow-init, the Airflow api-server, scheduler,
    dag-processor and triggerer, MLflow, the API) and Superset (from .venv-superset)
    with compose's own commands and environment, on one PostgreSQL made as the
    warehouse service makes it. Each service's log is in STATE/logs.
    """
    from rich.console import Console
    from rich.table import Table

    from moviesforyou.foundation.config import Settings

    console = Console()
    running = LocalStack(state or Settings.from_env().home / "stack", env_file)
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
            raise StackError(f"a service stopped; see {running.logs}")
        except KeyboardInterrupt:
            console.print("stopping")


main()

