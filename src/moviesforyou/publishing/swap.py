"""The atomic swap of the recs tables, the versions kept, and the SQL functions.

:func:`swap` moves the live tables to ``recs_history`` and the incoming ones into
``recs`` in one short transaction (see :mod:`moviesforyou.publishing.publish`);
:func:`rollback` swaps a kept version back in the same way; :func:`create_functions`
(re)creates ``recs.recommend`` and its helpers for whichever publish is live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time

import psycopg2.errors
from psycopg2 import sql

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import PublishSettings, Settings
from moviesforyou.foundation.errors import MoviesForYouError
from moviesforyou.publishing.recs_build import HISTORY, LIVE, TABLES, drop_schema_tables

log = logging.getLogger(__name__)


class PublishError(MoviesForYouError):
    pass


def live_publish_id(cur) -> int | None:
    cur.execute("select to_regclass('recs.publication') is not null")
    if not cur.fetchone()[0]:
        return None
    cur.execute("select publish_id from recs.publication")
    row = cur.fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- swap


def swap(conn, config: PublishSettings, *, incoming_schema: str, incoming_suffix: str,
          new_live: int, log_sql: list[tuple[str, tuple]]) -> tuple[float, float]:
    """Move the live tables to history and the incoming ones to ``recs``, atomically.

    Returns:
        (milliseconds the locks were held, milliseconds spent waiting for them).
    """
    started = time.perf_counter()
    attempts = 200
    for _ in range(attempts):
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("set local lock_timeout = {}").format(
                    sql.Literal(f"{config.lock_timeout_ms}ms")))
                old = live_publish_id(cur)
                live = [t for t in TABLES if _exists(cur, LIVE, t)]
                if live:
                    cur.execute(sql.SQL("lock table {} in access exclusive mode").format(
                        sql.SQL(", ").join(sql.SQL("recs.{}").format(sql.Identifier(t))
                                           for t in live)))
                locked = time.perf_counter()
                for table in TABLES:
                    if table in live:
                        archived = f"{table}__p{old}"
                        cur.execute(sql.SQL("alter table recs.{} rename to {}").format(
                            sql.Identifier(table), sql.Identifier(archived)))
                        cur.execute(sql.SQL("alter table recs.{} set schema {}").format(
                            sql.Identifier(archived), sql.Identifier(HISTORY)))
                    incoming = table + incoming_suffix
                    cur.execute(sql.SQL("alter table {}.{} set schema recs").format(
                        sql.Identifier(incoming_schema), sql.Identifier(incoming)))
                    if incoming_suffix:
                        cur.execute(sql.SQL("alter table recs.{} rename to {}").format(
                            sql.Identifier(incoming), sql.Identifier(table)))
                cur.execute("update ops.publish_log set status = 'archived' "
                            "where status = 'live' and publish_id <> %s", (new_live,))
                cur.execute("update ops.publish_log set status = 'live', went_live_at = now() "
                            "where publish_id = %s", (new_live,))
                for statement, params in log_sql:
                    cur.execute(statement, params)
            conn.commit()
            done = time.perf_counter()
            return (done - locked) * 1000, (locked - started) * 1000
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            time.sleep(random.uniform(0.01, 0.05))  # let the readers in the queue through
    raise PublishError(f"could not lock the live recs tables in {attempts} attempts "
                       f"of {config.lock_timeout_ms} ms")


def _exists(cur, schema: str, table: str) -> bool:
    cur.execute("select to_regclass(%s) is not null",
                (sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                 .as_string(cur),))
    return cur.fetchone()[0]


def history_versions(cur) -> list[int]:
    """Publish ids kept in ``recs_history`` (complete sets only), newest first."""
    cur.execute("""select substring(tablename from '__p(\\d+)$')::bigint as pid, count(*)
                   from pg_tables where schemaname = %s and tablename ~ '__p\\d+$'
                   group by 1 order by 1 desc""", (HISTORY,))
    return [pid for pid, n in cur.fetchall() if n == len(TABLES)]


def prune(conn, keep: int) -> list[int]:
    with conn, conn.cursor() as cur:
        dropped = history_versions(cur)[keep:]
        for pid in dropped:
            drop_schema_tables(cur, HISTORY, f"__p{pid}")
        if dropped:
            cur.execute("update ops.publish_log set status = 'dropped' "
                        "where publish_id = any(%s)", (dropped,))
    return dropped


# --------------------------------------------------------------------------- functions


#: The largest rank :func:`dot_function_sql` writes out term by term.
UNROLL_MAX = 512


def dot_function_sql(rank: int | None) -> str:
    """``recs.implicit_dot(u, m)``: the dot product of two factor vectors, unrolled for
    ``rank`` (one expression Postgres inlines, about six times faster than summing over
    ``unnest`` when ``recs.recommend`` scores the whole catalogue for a top-up). Vectors
    of any other length (a rolled-back publish of another rank) take the ``unnest`` sum,
    so the answer never depends on which publish the unrolling was made for. Ranks above
    :data:`UNROLL_MAX` (an EASE list model's thousand directions) are not unrolled."""
    rank = rank if rank and rank <= UNROLL_MAX else None
    unrolled = " + ".join(f"u[{i}] * m[{i}]" for i in range(1, (rank or 0) + 1))
    # no subquery in the body: Postgres inlines only bodies without one
    body = (f"case when cardinality(u) = {rank} and cardinality(m) = {rank} "
            f"then {unrolled} else recs.dot_sum(u, m) end") if rank else "recs.dot_sum(u, m)"
    return f"""
create or replace function recs.dot_sum(u double precision[], m double precision[])
returns double precision
language sql immutable parallel safe as $$
    select sum(a * b) from unnest(u, m) as t (a, b)
$$;
comment on function recs.dot_sum(double precision[], double precision[]) is
    'Dot product of two factor vectors of any length (recs.implicit_dot''s general case).';
create or replace function recs.implicit_dot(u double precision[], m double precision[])
returns double precision
language sql immutable parallel safe as $$ select {body} $$;
comment on function recs.implicit_dot(double precision[], double precision[]) is
    'Dot product of two factor vectors (a user''s and a movie''s implicit factors give '
    'the score recs.recommend ranks by); unrolled for the rank of the publish that made it.';
"""


def functions_sql(rank: int | None = None) -> str:
    """The recs functions, the dot product unrolled for ``rank``."""
    return dot_function_sql(rank) + warehouse.ddl("recs_functions")


def create_functions(conn) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("select cardinality(implicit_factors) from recs.movie_factors "
                    "where implicit_factors is not null limit 1")
        row = cur.fetchone()
        cur.execute(functions_sql(row[0] if row else None))


def versions(settings: Settings) -> list[tuple]:
    """Live and kept versions: (publish_id, where, model_version, went_live_at, row_counts)."""
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        live = live_publish_id(cur)
        kept = history_versions(cur)
        cur.execute("""select publish_id, model_version, went_live_at, row_counts
                       from ops.publish_log where publish_id = any(%s)
                       order by publish_id desc""", ([p for p in [live, *kept] if p],))
        return [(pid, "live" if pid == live else "kept", version, at, counts)
                for pid, version, at, counts in cur.fetchall()]


def rollback(settings: Settings, publish_id: int | None = None) -> tuple[int, float]:
    """Swap a kept version back in (default: the newest kept). Returns (id, lock ms)."""
    config = settings.publish
    with warehouse.writer_lock(settings, "rollback") as conn:
        with conn, conn.cursor() as cur:
            kept = history_versions(cur)
            live = live_publish_id(cur)
            if not kept:
                raise PublishError("no earlier version is kept in recs_history")
            target = kept[0] if publish_id is None else int(publish_id)
            if target not in kept:
                raise PublishError(f"publish {target} is not kept; kept: "
                                   f"{', '.join(map(str, kept))}")
            cur.execute("select model_name, model_version from ops.publish_log "
                        "where publish_id = %s", (target,))
            name, version = cur.fetchone()
        lock_ms, _ = swap(conn, config, incoming_schema=HISTORY,
                          incoming_suffix=f"__p{target}", new_live=target, log_sql=[(
                               """insert into ops.publish_log (action, status, dataset,
                                      model_name, model_version, finished_at, went_live_at,
                                      metrics, swap_lock_ms)
                                  values ('rollback', 'archived', %s, %s, %s, now(), now(),
                                          %s, %s)""",
                               (settings.dataset, name, version,
                                json.dumps({"restored_publish_id": target,
                                            "replaced_publish_id": live}), None))])
        create_functions(conn)
    log.info("rolled back: publish %d (model v%s) is live again, replacing %s", target, version,
             live)
    return target, lock_ms
