"""Load a MovieLens release into the ``raw`` schema.

Every raw table (``raw.ratings``, ``raw.movies``, ``raw.users``, ``raw.tags``,
``raw.links``, ``raw.genres``, ``raw.occupations``) is list-partitioned by
``dataset``, one partition per release (``raw.ratings__ml_100k``), so several
releases can sit side by side and one can be replaced without touching the
others.

A load is one transaction:

1. checksum every file the release needs; when they match the last good load of
   the same dataset, record ``unchanged`` in the ledger and stop (``force``
   reloads anyway);
2. COPY each file, parsed and checked line by line, into a new table beside the
   live partition;
3. detach and drop the old partitions and attach the new ones;
4. write the ledger row (``ops.source_loads``) and commit.

Any error rolls all of it back, so readers see the old release or the new one,
never a mix and never half a file; the failure is then written to the ledger in
its own transaction.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import psycopg2
from psycopg2 import sql

from moviesforyou import sources
from moviesforyou.errors import SourceError
from moviesforyou.formats import LAYOUTS, RAW_TABLES, Context, Row

log = logging.getLogger(__name__)

#: Called as (table, file display name, bytes read, file size) while a file loads.
LoadProgress = Callable[[str, str, int, int], None]


def partition_name(table: str, dataset: str) -> str:
    return f"{table}__{re.sub(r'[^a-z0-9]+', '_', dataset.lower())}"


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


class _CopyStream(io.RawIOBase):
    """A file-like object COPY reads from, fed by an iterator of rows as CSV."""

    def __init__(self, rows: Iterable[Row], batch: int = 20_000) -> None:
        self._rows = iter(rows)
        self._batch = batch
        self._buffer = b""
        self._offset = 0
        self.count = 0
        self.error: Exception | None = None  # what the parser raised; psycopg2 hides it

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        n = 0
        for row in self._rows:
            writer.writerow(["\\N" if v is None else v for v in row])
            n += 1
            if n >= self._batch:
                break
        self.count += n
        self._buffer = self._buffer[self._offset:] + text.getvalue().encode("utf-8")
        self._offset = 0
        return n > 0

    def read(self, size: int = -1) -> bytes:
        try:
            if self._offset >= len(self._buffer) and not self._fill():
                return b""
        except Exception as exc:
            self.error = exc
            raise
        end = len(self._buffer) if size < 0 else self._offset + size
        chunk = self._buffer[self._offset:end]
        self._offset += len(chunk)
        return chunk


class _Counting(io.RawIOBase):
    """Wraps a binary stream and reports bytes read."""

    def __init__(self, inner: IO[bytes], report: Callable[[int], None]) -> None:
        self._inner = inner
        self._report = report
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self.done += len(data)
        self._report(self.done)
        return len(data)


def _loaded_by(cur) -> str:
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


def release_features(cur, dataset: str) -> sources.Features:
    """What ``dataset``'s release has: the layout its newest load recorded, else the
    layout of the GroupLens release of that name."""
    cur.execute("""select layout from ops.source_loads
                   where dataset = %s and status = 'loaded' and layout is not null
                   order by load_id desc limit 1""", (dataset,))
    row = cur.fetchone()
    if row:
        return sources.FEATURES[row[0]]
    if dataset in sources.RELEASES:
        return sources.FEATURES[sources.RELEASES[dataset].layout]
    raise SourceError(f"no load of {dataset!r} records its layout: ingest the release first")


def load_release(
    conn,
    files: sources.ReleaseFiles,
    dataset: str,
    *,
    layout: str | None = None,
    force: bool = False,
    progress: LoadProgress | None = None,
) -> LoadResult:
    """Load one release into ``raw``, atomically and idempotently.

    Args:
        conn: a psycopg2 connection as the warehouse owner; not in a transaction.
        files: the release's files (see :func:`moviesforyou.sources.open_source`).
        dataset: the release name; the value of ``dataset`` in every raw table.
        layout: ``100k``, ``1m`` or ``csv``; detected from the files when None.
        force: reload even when the files match the last good load.
        progress: called as each file is read.

    Returns:
        The ledger entry of this load.

    Raises:
        SourceError: the release is incomplete or a line is invalid; nothing was loaded.
    """
    started = time.time()
    with conn.cursor() as cur:
        loaded_by = _loaded_by(cur)
    conn.rollback()
    try:
        layout = layout or sources.release_for(dataset,
                                               sources.detect_layout(files.names())).layout
        files.require(layout)
        checksums = {
            spec.file: files.sha256(spec.file) for spec in LAYOUTS[layout] if spec.file
        }
        with conn, conn.cursor() as cur:
            # one load per dataset at a time; waits for a concurrent load to finish
            cur.execute("select pg_advisory_xact_lock(hashtext('moviesforyou.load'), "
                        "hashtext(%s))", (dataset,))
            previous = last_good_load(cur, dataset)
            if previous and previous["files"] == checksums and not force:
                status, counts = "unchanged", {}
            else:
                status, counts = "loaded", {}
            cur.execute("select nextval('ops.source_loads_load_id_seq'), now()")
            load_id, loaded_at = cur.fetchone()
            if status == "loaded":
                counts = _copy_and_swap(cur, files, dataset, layout, load_id, loaded_at,
                                        progress)
            cur.execute(
                """insert into ops.source_loads (load_id, dataset, source, status, layout,
                       archive_sha256, files, row_counts, loaded_by, started_at, loaded_at,
                       duration_s)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), now(),
                       extract(epoch from clock_timestamp()) - %s)""",
                (load_id, dataset, files.origin, status, layout, files.archive_sha256,
                 json.dumps(checksums), json.dumps(counts), loaded_by, started, started),
            )
    except Exception as exc:
        conn.rollback()
        _record_failure(conn, dataset, files, loaded_by, started, exc)
        raise
    result = LoadResult(load_id, dataset, files.origin, status, checksums, counts,
                        round(time.time() - started, 2))
    log.info("%s %s from %s: %s", status, dataset, files.origin, counts or "no change")
    return result


def _record_failure(conn, dataset, files, loaded_by, started, exc: Exception) -> None:
    try:
        with conn, conn.cursor() as cur:
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


def _copy_and_swap(cur, files, dataset, layout, load_id, loaded_at, progress) -> dict[str, int]:
    ctx = Context()
    counts: dict[str, int] = {}
    staged: list[tuple[str, str]] = []
    for spec in LAYOUTS[layout]:
        new = f"{partition_name(spec.table, dataset)}__load{load_id}"
        _create_staging_table(cur, spec.table, new, dataset, load_id, loaded_at)
        columns = [name for name, _ in RAW_TABLES[spec.table]]
        copy = sql.SQL("copy raw.{} ({}) from stdin with (format csv, null '\\N')").format(
            sql.Identifier(new), sql.SQL(", ").join(map(sql.Identifier, columns)))
        if spec.file:
            display, size = files.display(spec.file), files.size(spec.file)
            with files.open(spec.file) as raw_handle:
                def report(done: int, t=spec.table, d=display, s=size) -> None:
                    if progress:
                        progress(t, d, done, s)

                handle = io.BufferedReader(_Counting(raw_handle, report), 1 << 20)
                stream = _copy(cur, copy, spec.parse(handle, display, ctx))
        else:
            stream = _copy(cur, copy, spec.parse(io.BytesIO(), "(built in)", ctx))
        counts[spec.table] = stream.count
        staged.append((spec.table, new))
        log.debug("copied %d rows into raw.%s", stream.count, spec.table)
    if counts.get("ratings", 0) == 0:
        raise SourceError("the release has no ratings", path=files.origin)

    for table in RAW_TABLES:  # including tables this release lacks: no stale leftovers
        _drop_partition(cur, table, dataset)
    for table, new in staged:
        cur.execute(sql.SQL("alter table raw.{} rename to {}").format(
            sql.Identifier(new), sql.Identifier(partition_name(table, dataset))))
        cur.execute(sql.SQL("alter table raw.{} attach partition raw.{} for values in ({})")
                    .format(sql.Identifier(table),
                            sql.Identifier(partition_name(table, dataset)),
                            sql.Literal(dataset)))
    return counts


def _copy(cur, statement: sql.Composable, rows: Iterable[Row]) -> _CopyStream:
    stream = _CopyStream(rows)
    try:
        cur.copy_expert(statement, stream, size=1 << 20)
    except psycopg2.Error:
        if stream.error is not None:  # the parser's error, with file and line, not COPY's
            raise stream.error from None
        raise
    return stream


def _create_staging_table(cur, table, new, dataset, load_id, loaded_at) -> None:
    ident = sql.Identifier(new)
    cur.execute(sql.SQL("create table raw.{} (like raw.{} including defaults)")
                .format(ident, sql.Identifier(table)))
    cur.execute(sql.SQL(
        "alter table raw.{} alter column dataset set default {}, "
        "alter column load_id set default {}, alter column loaded_at set default {}, "
        "add constraint {} check (dataset = {})"
    ).format(ident, sql.Literal(dataset), sql.Literal(load_id), sql.Literal(loaded_at),
             sql.Identifier(f"{new}_dataset_check"), sql.Literal(dataset)))


def _drop_partition(cur, table: str, dataset: str) -> None:
    name = partition_name(table, dataset)
    cur.execute(
        """select 1 from pg_inherits i join pg_class c on c.oid = i.inhrelid
           join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = 'raw' and c.relname = %s""",
        (name,),
    )
    if cur.fetchone():
        cur.execute(sql.SQL("alter table raw.{} detach partition raw.{}").format(
            sql.Identifier(table), sql.Identifier(name)))
    cur.execute(sql.SQL("drop table if exists raw.{}").format(sql.Identifier(name)))


def iter_ledger(cur, limit: int = 20) -> Iterator[tuple]:
    cur.execute(
        """select load_id, dataset, status, loaded_at, row_counts->>'ratings', source, error
           from ops.source_loads order by load_id desc limit %s""",
        (limit,),
    )
    yield from cur.fetchall()
