"""Load a MovieLens release into the ``raw`` schema: write, audit, publish.

Every raw table (``raw.ratings``, ``raw.movies``, ``raw.users``, ``raw.tags``,
``raw.links``, ``raw.genres``, ``raw.occupations``) is list-partitioned by
``dataset``, one partition per release (``raw.ratings__ml_100k``), so several
releases can sit side by side and one can be replaced without touching the
others.

A load goes through three steps, each recorded in the ledger
(``ops.source_loads``):

1. **write** (:func:`stage_release`): checksum every file the release needs;
   when they match the last good load of the same dataset, record
   ``unchanged`` and stop (``force`` reloads anyway). Otherwise COPY each file,
   parsed and checked line by line, into the dataset's staging schema
   (``raw_staging__ml_100k``, the same tables as ``raw``) and record the load
   as ``staged``. The ledger row says ``staging`` while the copy runs, in its
   own committed transaction, so a load whose process or server died shows up:
   the next load marks it ``failed`` (interrupted). A parse error rolls the
   copy back and records ``failed``.
2. **audit**: the caller's check of the staged tables, normally the raw Great
   Expectations suite (:func:`moviesforyou.quality.checks.validate` with the staging
   schema). A load that fails it is **rejected**: its tables move to
   ``raw_rejected__ml_100k`` for inspection (the previous rejected load of the
   dataset is dropped), the ledger names that schema, and the error says so.
3. **publish** (:func:`attach_load`): in one transaction, detach and drop the
   live partitions and attach the staged tables in their place; the ledger row
   becomes ``loaded``.

Readers of ``raw`` see the last good release until step 3 commits, and then the
new one; never a mix, half a file or a release that failed its audit.
:func:`load_release` runs all three; the nightly DAG runs step 1 in
``extract_source`` and steps 2 and 3 in ``validate_raw``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
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

from moviesforyou.foundation.errors import MoviesForYouError, SourceError
from moviesforyou.ingestion import sources
from moviesforyou.ingestion.formats import LAYOUTS, RAW_TABLES, Context, Row

log = logging.getLogger(__name__)

#: Called as (table, file display name, bytes read, file size) while a file loads.
LoadProgress = Callable[[str, str, int, int], None]


#: Audits a staged load (e.g. runs the raw suite on ``load.schema``); raises to reject it.
Audit = Callable[["LoadResult"], object]


def _suffix(dataset: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", dataset.lower())


def partition_name(table: str, dataset: str) -> str:
    return f"{table}__{_suffix(dataset)}"


def staging_schema(dataset: str) -> str:
    """Where a load of ``dataset`` is written and audited before it goes live."""
    return f"raw_staging__{_suffix(dataset)}"


def rejected_schema(dataset: str) -> str:
    """Where the last load of ``dataset`` that failed its audit is kept for inspection."""
    return f"raw_rejected__{_suffix(dataset)}"


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


def load_release(
    conn,
    files: sources.ReleaseFiles,
    dataset: str,
    *,
    layout: str | None = None,
    force: bool = False,
    progress: LoadProgress | None = None,
    audit: Audit | None = None,
) -> LoadResult:
    """Load one release into ``raw``: write, audit (when given), publish.

    Args:
        conn: a psycopg2 connection as the warehouse owner; not in a transaction.
        files: the release's files (see :func:`moviesforyou.ingestion.sources.open_source`).
        dataset: the release name; the value of ``dataset`` in every raw table.
        layout: ``100k``, ``1m`` or ``csv``; detected from the files when None.
        force: reload even when the files match the last good load.
        progress: called as each file is read.
        audit: called with the staged load before it goes live; raising rejects it.
            None attaches what parsed (``moviesforyou ingest --no-validate``).

    Returns:
        The ledger entry of this load (``loaded`` or ``unchanged``).

    Raises:
        SourceError: the release is incomplete or a line is invalid; nothing was loaded.
        LoadRejected: the audit failed; the load is kept aside, the live release stays.
    """
    staged = stage_release(conn, files, dataset, layout=layout, force=force,
                           progress=progress)
    if staged.status != "staged":
        return staged
    return publish_staged(conn, staged, audit)


def publish_staged(conn, staged: LoadResult, audit: Audit | None = None) -> LoadResult:
    """Audit a staged load, then attach it, or reject it when the audit raises."""
    if audit is not None:
        try:
            audit(staged)
        except Exception as exc:
            raise reject_load(conn, staged, exc) from exc
    return attach_load(conn, staged)


def stage_release(
    conn,
    files: sources.ReleaseFiles,
    dataset: str,
    *,
    layout: str | None = None,
    force: bool = False,
    progress: LoadProgress | None = None,
) -> LoadResult:
    """Write a release into its staging schema (``staged``), or record ``unchanged``.

    Raises:
        SourceError: the release is incomplete or a line is invalid; nothing was staged.
    """
    started = time.time()
    with conn.cursor() as cur:
        loaded_by = _loaded_by(cur)
    conn.rollback()
    load_id = None
    try:
        layout = layout or sources.release_for(dataset,
                                               sources.detect_layout(files.names())).layout
        files.require(layout)
        checksums = {
            spec.file: files.sha256(spec.file) for spec in LAYOUTS[layout] if spec.file
        }
        with conn, conn.cursor() as cur:
            _lock_dataset(cur, dataset)
            _fail_interrupted(cur, dataset)
            previous = last_good_load(cur, dataset)
            unchanged = previous and previous["files"] == checksums and not force
            in_flight = None if unchanged else _staged_with(cur, dataset, checksums)
            if in_flight is not None:
                # another run staged these very files and has not published them yet:
                # this run audits and publishes that load (whichever run comes first)
                log.info("load %s of the same files is already staged in %s by %s: "
                         "this run goes on with it", in_flight.load_id, in_flight.schema,
                         in_flight.source)
                return in_flight
            _abandon_staged(cur, dataset)
            cur.execute("select nextval('ops.source_loads_load_id_seq'), now()")
            load_id, loaded_at = cur.fetchone()
            status = "unchanged" if unchanged else "staging"
            cur.execute(
                """insert into ops.source_loads (load_id, dataset, source, status, layout,
                       archive_sha256, files, row_counts, loaded_by, started_at, loaded_at,
                       duration_s)
                   values (%s, %s, %s, %s, %s, %s, %s, '{}', %s, to_timestamp(%s), now(),
                       extract(epoch from clock_timestamp()) - %s)""",
                (load_id, dataset, files.origin, status, layout, files.archive_sha256,
                 json.dumps(checksums), loaded_by, started, started),
            )
        counts, schema = {}, None
        if not unchanged:  # the ledger says "staging" from here until the copy commits
            schema = staging_schema(dataset)
            with conn, conn.cursor() as cur:
                _lock_dataset(cur, dataset)
                counts = _copy_to_staging(cur, files, dataset, layout, schema, load_id,
                                          loaded_at, progress)
                cur.execute("""update ops.source_loads
                               set status = 'staged', row_counts = %s, schema_name = %s,
                                   loaded_at = now(),
                                   duration_s = extract(epoch from clock_timestamp()) - %s
                               where load_id = %s""",
                            (json.dumps(counts), schema, started, load_id))
            status = "staged"
    except Exception as exc:
        with contextlib.suppress(psycopg2.Error):  # the connection may be gone
            conn.rollback()
        _record_failure(conn, dataset, files, loaded_by, started, exc,
                        load_id=load_id)
        raise
    result = LoadResult(load_id, dataset, files.origin, status, checksums, counts,
                        round(time.time() - started, 2), layout, schema)
    log.info("%s %s from %s: %s", status, dataset, files.origin,
             f"{counts} in {schema}" if counts else "no change")
    return result


def staged_load(conn, load_id: int) -> LoadResult:
    """The ledger entry of a staged load, to audit and attach it (e.g. in the next task)."""
    with conn, conn.cursor() as cur:
        cur.execute(f"select {_LEDGER_COLUMNS} from ops.source_loads where load_id = %s",
                    (load_id,))
        row = cur.fetchone()
    if row is None:
        raise SourceError(f"there is no load {load_id} in ops.source_loads")
    load = _ledger_result(row)
    if load.status != "staged":
        raise SourceError(f"load {load_id} of {load.dataset} is {load.status}, not staged: "
                          "only a staged load can be published")
    return load


#: The ledger columns :func:`_ledger_result` reads, in its order.
_LEDGER_COLUMNS = ("load_id, dataset, source, status, files, row_counts, duration_s, layout, "
                   "schema_name")


def _ledger_result(row) -> LoadResult:
    load_id, dataset, source, status, files, counts, seconds, layout, schema = row
    return LoadResult(load_id, dataset, source, status, files, counts, float(seconds or 0),
                      layout, schema)


def attach_load(conn, staged: LoadResult) -> LoadResult:
    """Publish a staged load: swap its tables in for the live partitions, in one transaction.

    Raises:
        SourceError: the load is no longer staged, or a newer load went live meanwhile.
    """
    started = time.time()
    dataset = staged.dataset
    try:
        with conn, conn.cursor() as cur:
            _lock_dataset(cur, dataset)
            cur.execute("select status, schema_name from ops.source_loads where load_id = %s",
                        (staged.load_id,))
            status, schema = cur.fetchone() or (None, None)
            if status != "staged" or schema is None:
                raise SourceError(f"load {staged.load_id} of {dataset} is {status}, not staged")
            newer = last_good_load(cur, dataset)
            if newer and newer["load_id"] > staged.load_id:
                raise SourceError(f"load {newer['load_id']} of {dataset} went live after load "
                                  f"{staged.load_id} was staged; not replacing it")
            for table in RAW_TABLES:  # including tables this release lacks: no leftovers
                _drop_partition(cur, table, dataset)
            for table in _tables_in(cur, schema):
                if table not in staged.row_counts:  # the release has no such file
                    cur.execute(sql.SQL("drop table {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)))
                    continue
                name = partition_name(table, dataset)
                cur.execute(sql.SQL("alter table {}.{} rename to {}").format(
                    sql.Identifier(schema), sql.Identifier(table), sql.Identifier(name)))
                cur.execute(sql.SQL("alter table {}.{} set schema raw").format(
                    sql.Identifier(schema), sql.Identifier(name)))
                cur.execute(sql.SQL("alter table raw.{} attach partition raw.{} "
                                    "for values in ({})").format(
                    sql.Identifier(table), sql.Identifier(name), sql.Literal(dataset)))
            cur.execute(sql.SQL("drop schema {}").format(sql.Identifier(schema)))
            cur.execute("""update ops.source_loads
                           set status = 'loaded', schema_name = null, loaded_at = now(),
                               duration_s = duration_s + (extract(epoch from clock_timestamp())
                                                          - %s)
                           where load_id = %s""", (started, staged.load_id))
    except Exception:
        conn.rollback()
        raise
    result = dataclasses.replace(staged, status="loaded", schema=None,
                                 duration_s=round(staged.duration_s + time.time() - started, 2))
    log.info("load %s of %s is live in raw (%s)", staged.load_id, dataset, staged.row_counts)
    return result


def reject_load(conn, staged: LoadResult, reason: Exception) -> LoadRejected:
    """Move a staged load that failed its audit aside, record it, and return the error
    to raise (naming where the load is kept and what stays live)."""
    dataset, kept = staged.dataset, rejected_schema(staged.dataset)
    with conn, conn.cursor() as cur:
        _lock_dataset(cur, dataset)
        cur.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(kept)))
        cur.execute("update ops.source_loads set schema_name = null "
                    "where dataset = %s and status = 'rejected'", (dataset,))
        cur.execute(sql.SQL("alter schema {} rename to {}").format(
            sql.Identifier(staged.schema), sql.Identifier(kept)))
        live = last_good_load(cur, dataset)
        note = (f"load {staged.load_id} of {dataset} from {staged.source} was rejected and "
                f"kept for inspection in schema {kept}; "
                + (f"load {live['load_id']} stays live" if live else "raw has no release of it"))
        cur.execute("""update ops.source_loads set status = 'rejected', schema_name = %s,
                           error = %s where load_id = %s""",
                    (kept, f"{note}: {reason}"[:4000], staged.load_id))
    log.error("%s", note)
    return LoadRejected(f"{note}.\n{reason}")


def _lock_dataset(cur, dataset: str) -> None:
    """One load step per dataset at a time (held to the end of the transaction)."""
    cur.execute("select pg_advisory_xact_lock(hashtext('moviesforyou.load'), hashtext(%s))",
                (dataset,))


def _staged_with(cur, dataset: str, checksums: dict[str, str]) -> LoadResult | None:
    """A staged load of ``dataset`` of exactly these files, if one waits for its audit."""
    cur.execute(f"""select {_LEDGER_COLUMNS} from ops.source_loads
                    where dataset = %s and status = 'staged'
                    order by load_id desc limit 1""", (dataset,))
    row = cur.fetchone()
    load = None if row is None else _ledger_result(row)
    return load if load is not None and load.files == checksums else None


def _fail_interrupted(cur, dataset: str) -> None:
    """Mark loads of ``dataset`` left ``staging`` as failed: a load writes its staging
    tables in one transaction under the dataset's lock, so one still ``staging`` when
    another starts lost its process or its server midway, and its copy rolled back."""
    cur.execute("""update ops.source_loads
                   set status = 'failed',
                       error = 'interrupted: its process or the warehouse stopped while it '
                               || 'was being written; nothing of it was kept'
                   where dataset = %s and status = 'staging'
                   returning load_id""", (dataset,))
    for (load_id,) in cur.fetchall():
        log.warning("load %s of %s was interrupted while being written: marked failed",
                    load_id, dataset)


def _abandon_staged(cur, dataset: str) -> None:
    """Drop a load staged earlier and never audited (its run died or was cleared)."""
    cur.execute("""update ops.source_loads
                   set status = 'failed', schema_name = null,
                       error = 'abandoned: staged but never audited and attached; a newer '
                               || 'load of the dataset was started'
                   where dataset = %s and status = 'staged'""", (dataset,))
    cur.execute(sql.SQL("drop schema if exists {} cascade").format(
        sql.Identifier(staging_schema(dataset))))


def _tables_in(cur, schema: str) -> list[str]:
    cur.execute("select tablename from pg_tables where schemaname = %s order by tablename",
                (schema,))
    return [name for (name,) in cur.fetchall()]


def _record_failure(conn, dataset, files, loaded_by, started, exc: Exception, *,
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


def _copy_to_staging(cur, files, dataset, layout, schema, load_id, loaded_at,
                     progress) -> dict[str, int]:
    """Every raw table, in ``schema``: the release's files copied in, the rest empty (so
    the audit sees the same tables whatever the layout)."""
    cur.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    for table in RAW_TABLES:
        _create_staging_table(cur, table, schema, dataset, load_id, loaded_at)
    ctx = Context()
    counts: dict[str, int] = {}
    for spec in LAYOUTS[layout]:
        columns = [name for name, _ in RAW_TABLES[spec.table]]
        copy = sql.SQL("copy {}.{} ({}) from stdin with (format csv, null '\\N')").format(
            sql.Identifier(schema), sql.Identifier(spec.table),
            sql.SQL(", ").join(map(sql.Identifier, columns)))
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
        log.debug("copied %d rows into %s.%s", stream.count, schema, spec.table)
    if counts.get("ratings", 0) == 0:
        raise SourceError("the release has no ratings", path=files.origin)
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


def _create_staging_table(cur, table, schema, dataset, load_id, loaded_at) -> None:
    """``schema.table`` shaped like ``raw.table``, ready to attach as its partition."""
    ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    cur.execute(sql.SQL("create table {} (like raw.{} including defaults)")
                .format(ident, sql.Identifier(table)))
    cur.execute(sql.SQL(
        "alter table {} alter column dataset set default {}, "
        "alter column load_id set default {}, alter column loaded_at set default {}, "
        "add constraint {} check (dataset = {})"
    ).format(ident, sql.Literal(dataset), sql.Literal(load_id), sql.Literal(loaded_at),
             sql.Identifier(f"{partition_name(table, dataset)}_load{load_id}_dataset_check"),
             sql.Literal(dataset)))


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
