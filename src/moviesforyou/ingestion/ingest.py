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
import dataclasses
import json
import logging
import time
from collections.abc import Callable

import psycopg2
from psycopg2 import sql

from moviesforyou.foundation import releases
from moviesforyou.foundation.errors import SourceError
from moviesforyou.ingestion import sources
from moviesforyou.ingestion.copying import copy_to_staging, dataset_suffix, partition_name
from moviesforyou.ingestion.formats import LAYOUTS, RAW_TABLES
from moviesforyou.ingestion.ledger import (  # noqa: F401 (LoadRejected, LoadResult: its API)
    LEDGER_COLUMNS,
    LoadRejected,
    LoadResult,
    current_loader,
    iter_ledger,
    last_good_load,
    ledger_result,
    record_failure,
    staged_load,
)

log = logging.getLogger(__name__)

#: Called as (table, file display name, bytes read, file size) while a file loads.
LoadProgress = Callable[[str, str, int, int], None]


#: Audits a staged load (e.g. runs the raw suite on ``load.schema``); raises to reject it.
Audit = Callable[["LoadResult"], object]


def staging_schema(dataset: str) -> str:
    """Where a load of ``dataset`` is written and audited before it goes live."""
    return f"raw_staging__{dataset_suffix(dataset)}"


def rejected_schema(dataset: str) -> str:
    """Where the last load of ``dataset`` that failed its audit is kept for inspection."""
    return f"raw_rejected__{dataset_suffix(dataset)}"


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
        loaded_by = current_loader(cur)
    conn.rollback()
    load_id = None
    try:
        layout = layout or sources.release_for(dataset,
                                               sources.detect_layout(files.names())).layout
        files.require(layout)
        present = set(files.names())
        checksums = {spec.file: files.sha256(spec.file) for spec in LAYOUTS[layout]
                     if spec.file and (spec.file in present or not spec.optional)}
        features = releases.features_of(layout, checksums)
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
                       features, archive_sha256, files, row_counts, loaded_by, started_at,
                       loaded_at, duration_s)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, '{}', %s, to_timestamp(%s), now(),
                       extract(epoch from clock_timestamp()) - %s)""",
                (load_id, dataset, files.origin, status, layout,
                 json.dumps(features.as_dict()), files.archive_sha256,
                 json.dumps(checksums), loaded_by, started, started),
            )
        counts, schema = {}, None
        if not unchanged:  # the ledger says "staging" from here until the copy commits
            schema = staging_schema(dataset)
            with conn, conn.cursor() as cur:
                _lock_dataset(cur, dataset)
                counts = copy_to_staging(cur, files, dataset, layout, schema, load_id,
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
        record_failure(conn, dataset, files, loaded_by, started, exc,
                        load_id=load_id)
        raise
    result = LoadResult(load_id, dataset, files.origin, status, checksums, counts,
                        round(time.time() - started, 2), layout, schema)
    log.info("%s %s from %s: %s", status, dataset, files.origin,
             f"{counts} in {schema}" if counts else "no change")
    return result


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
    cur.execute(f"""select {LEDGER_COLUMNS} from ops.source_loads
                    where dataset = %s and status = 'staged'
                    order by load_id desc limit 1""", (dataset,))
    row = cur.fetchone()
    load = None if row is None else ledger_result(row)
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


