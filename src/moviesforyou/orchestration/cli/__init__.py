"""The ``moviesforyou`` command line.

Run ``moviesforyou --help`` for the commands. Configuration comes from the
environment (see :mod:`moviesforyou.foundation.config`), built once here into the settings
every command receives; options override it per call.

The commands live by stage: :mod:`.data` (warehouse, ingest, dbt, quality,
synthetic data), :mod:`.models` (training, the registry, publishing, the API)
and :mod:`.run` (the nightly DAG once).
"""

from __future__ import annotations

import logging
import sys

import click
import psycopg2
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import MoviesForYouError

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def _first_database_error(exc: BaseException) -> BaseException:
    """The earliest database error ``exc`` was raised in the handling of: when a server
    dies, the first one says why ("server closed the connection unexpectedly") and the
    later ones only that the connection is closed."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return next((e for e in reversed(chain) if isinstance(e, psycopg2.Error)), chain[0])


class _Group(click.Group):
    """Prints our own errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MoviesForYouError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(1)
        except (psycopg2.DatabaseError, psycopg2.InterfaceError) as exc:
            if getattr(exc, "pgcode", None):  # an SQL error: a bug, with its traceback
                raise
            # the server went away mid-command
            cause = _first_database_error(exc)
            said = str(cause).strip()
            first = said.splitlines()[0] if said else type(cause).__name__
            console.print(f"[bold red]error:[/] lost the warehouse connection: {first}; "
                          "nothing this command wrote was committed unless it said so",
                          highlight=False)
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



def counts_table(title: str, schema: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column(f"{schema} table")
    table.add_column("rows", justify="right")
    for name, count in counts.items():
        table.add_row(f"{schema}.{name}", f"{count:,}")
    return table


# the commands register themselves on `main`
from moviesforyou.orchestration.cli import data, models, replay, run  # noqa: E402

__all__ = ["console", "data", "main", "models", "replay", "run"]
