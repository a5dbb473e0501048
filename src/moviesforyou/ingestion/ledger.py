"""The load ledger, ``ops.source_loads``: one row per load, staged, loaded, rejected or
failed, and what the ingester reads back from it.
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from moviesforyou.foundation.errors import MoviesForYouError, SourceError

log = logging.getLogger(__name__)


class LoadRejected(MoviesForYouError):
    """A staged load failed its audit; it was kept aside and the live release kept."""


@dataclass
class LoadResult:
    """What a load did, as recorded in the ledger."""

    load_id: int
    dataset: str
    source: str
    status: str
    files: dict[str, str] = field(default_factory=dict)
    row_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    layout: str | None = None
    schema: str | None = None  #: where a staged or rejected load's tables are


def current_loader(cur) -> str:
    cur.execute("select current_user")
    return f"{cur.fetchone()[0]} ({getpass.getuser()}@{socket.gethostname()})"


def last_good_load(cur, dataset: str) -> dict | None:
    """The latest successful load of ``dataset``, as a dict, or None."""
    cur.execute(
        """select load_id, files, archive_sha256, loaded_at from ops.source_loads
           where dataset = %s and status = 'loaded' order by load_id desc limit 1""",
        (dataset,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    return {"load_id": row[0], "files": row[1], "archive_sha256": row[2], "loaded_at": row[3]}


def record_merges(cur, dataset: str, merged: int) -> None:
    """Count, on the live load of ``dataset``, its catalogue entries merged into another
    entry of the same film (the build that modelled it knows them: dbt's
    int_movie_merges)."""
    cur.execute("""update ops.source_loads set merged_entries = %s
                   where load_id = (select max(load_id) from ops.source_loads
                                    where dataset = %s and status = 'loaded')""",
                (merged, dataset))


def staged_load(conn, load_id: int) -> LoadResult:
    """The ledger entry of a staged load, to audit and attach it (e.g. in the next task)."""
    with conn, conn.cursor() as cur:
        cur.execute(f"select {LEDGER_COLUMNS} from ops.source_loads where load_id = %s",
                    (load_id,))
        row = cur.fetchone()
    if row is None:
        raise SourceError(f"there is no load {load_id} in ops.source_loads")
    load = ledger_result(row)
    if load.status != "staged":
        raise SourceError(f"load {load_id} of {load.dataset} is {load.status}, not staged: "
                          "only a staged load can be published")
    return load


#: The ledger columns :func:`ledger_result` reads, in its order.
LEDGER_COLUMNS = ("load_id, dataset, source, status, files, row_counts, duration_s, layout, "
                   "schema_name")


def ledger_result(row) -> LoadResult:
    load_id, dataset, source, status, files, counts, seconds, layout, schema = row
    return LoadResult(load_id, dataset, source, status, files, counts, float(seconds or 0),
                      layout, schema)


def record_failure(conn, dataset, files, loaded_by, started, exc: Exception, *,
                    load_id: int | None = None) -> None:
    if conn.closed:
        log.error("the warehouse connection was lost: the load is not recorded as failed "
                  "now; the next load of %s marks it so", dataset)
        return
    try:
        with conn, conn.cursor() as cur:
            if load_id is not None:  # its "staging" row
                cur.execute("""update ops.source_loads
                               set status = 'failed', error = %s,
                                   duration_s = extract(epoch from clock_timestamp()) - %s
                               where load_id = %s and status = 'staging'""",
                            (str(exc)[:2000], started, load_id))
                if cur.rowcount:
                    return
            cur.execute(
                """insert into ops.source_loads (dataset, source, status, archive_sha256,
                       error, loaded_by, started_at, duration_s)
                   values (%s, %s, 'failed', %s, %s, %s, to_timestamp(%s),
                       extract(epoch from clock_timestamp()) - %s)""",
                (dataset, files.origin, files.archive_sha256, str(exc)[:2000], loaded_by,
                 started, started),
            )
    except Exception:  # the ledger must never hide the real error
        log.exception("could not record the failed load in ops.source_loads")
        conn.rollback()


def iter_ledger(cur, limit: int = 20) -> Iterator[tuple]:
    cur.execute(
        """select load_id, dataset, status, loaded_at, row_counts->>'ratings', source, error
           from ops.source_loads order by load_id desc limit %s""",
        (limit,),
    )
    yield from cur.fetchall()
