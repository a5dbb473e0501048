"""Publish the recommendations: build beside the live tables, validate, swap in one step.

Input: the champion in the MLflow registry and the marts dbt built.
Output: the ``recs`` tables, the SQL functions on them, and a row in
``ops.publish_log``.

1. **Build.** The champion's factors are scored in Spark (``spark_jobs.score``)
   and COPYed, with the cold-start lists and the catalogue (dbt's
   ``mart_cold_start_lists`` and ``mart_movie_catalogue``), into ``recs_build``,
   a schema readers never look at. The tables' DDL is ``sql/recs_*.sql``. When
   the champion is a refresh of the live publish's model (``spark_jobs.refresh``:
   same movie factors, only the users who rated since re-solved), only those
   users are scored; every other list and every movie's neighbours are copied
   from the live tables: their factors did not change (the rating counts behind
   neighbour eligibility and the popular fallback are the live publish's).
2. **Validate.** The ``recs`` suite (``expectations/recs.yml``) runs on the
   build schema. A failure records the result, drops the build, raises
   :class:`~moviesforyou.quality.ValidationFailed` and leaves the live tables
   as they were.
3. **Swap.** One short transaction locks the live tables, moves them to
   ``recs_history`` (renamed ``<table>__p<publish_id>``) and moves the new ones
   into ``recs``. Readers hold a table only for the length of a query, so they
   wait for at most the swap (milliseconds), and a query reads either the old
   or the new version, never a mix and never an empty table. The lock wait is
   bounded by a ``lock_timeout`` shorter than ``deadlock_timeout`` and retried,
   so the swap gives way to readers rather than aborting them.
4. **Keep.** The last ``settings.publish.keep`` (``MFY_RECS_KEEP``) versions stay
   in ``recs_history``; :func:`rollback` swaps one of them back in the same way.

Every row of every recs table carries its ``publish_id`` and ``model_version``,
so any answer says which model and publish produced it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.errors
from psycopg2 import sql

from moviesforyou import quality, warehouse
from moviesforyou.config import PublishSettings, Settings
from moviesforyou.errors import MoviesForYouError
from moviesforyou.recs_build import (
    BUILD,
    HISTORY,
    LIVE,
    TABLES,
    build,
    drop_schema_tables,
    live_refreshed_since,
    movie_genres,
    movie_tags,
)

log = logging.getLogger(__name__)



class PublishError(MoviesForYouError):
    pass


@dataclass
class PublishResult:
    publish_id: int
    model_version: str
    row_counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    swap_lock_ms: float = 0.0
    validation: dict | None = None


# --------------------------------------------------------------------------- the log


def _log_start(cur, settings: Settings, action: str, **values) -> int:
    cur.execute("""insert into ops.publish_log (action, status, dataset, model_name,
                       model_version, mlflow_run_id, metrics)
                   values (%s, 'building', %s, %s, %s, %s, %s) returning publish_id""",
                (action, settings.dataset, values.get("model_name"),
                 values.get("model_version"), values.get("run_id"),
                 json.dumps(values.get("metrics", {}))))
    return cur.fetchone()[0]


def _log_update(settings: Settings, publish_id: int, **values) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    params = [json.dumps(v) if isinstance(v, dict) else v for v in values.values()]
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute(sql.SQL("update ops.publish_log set {} where publish_id = %s").format(columns),
                    [*params, publish_id])


def live_publish_id(cur) -> int | None:
    cur.execute("select to_regclass('recs.publication') is not null")
    if not cur.fetchone()[0]:
        return None
    cur.execute("select publish_id from recs.publication")
    row = cur.fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- swap


def _swap(conn, config: PublishSettings, *, incoming_schema: str, incoming_suffix: str,
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


def _prune(conn, keep: int) -> list[int]:
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


def _create_functions(conn) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("select cardinality(implicit_factors) from recs.movie_factors "
                    "where implicit_factors is not null limit 1")
        row = cur.fetchone()
        cur.execute(functions_sql(row[0] if row else None))


# --------------------------------------------------------------------------- entry points


class _Steps:
    """Timings of a publish's steps, and failure bookkeeping in ops.publish_log."""

    def __init__(self, settings: Settings, publish_id: int) -> None:
        self.settings, self.publish_id, self.timings = settings, publish_id, {}

    def run(self, name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)

    def failed(self, exc: BaseException) -> None:
        """Record the failure; when the warehouse itself is gone, the next publish marks
        this one failed (:func:`_supersede_builds`), and ``exc`` is what the caller sees."""
        validation = exc.report.as_json() if isinstance(exc, quality.ValidationFailed) else None
        try:
            _log_update(self.settings, self.publish_id, status="failed", finished_at="now",
                        timings=self._merged(), error=str(exc)[:4000], validation=validation)
        except psycopg2.Error as unrecorded:
            log.error("publish %s failed and could not be recorded: %s", self.publish_id,
                      unrecorded)

    def _merged(self) -> dict:
        with contextlib.closing(warehouse.connect(self.settings)) as conn, conn.cursor() as cur:
            cur.execute("select timings from ops.publish_log where publish_id = %s",
                        (self.publish_id,))
            row = cur.fetchone()
        return {**(row[0] if row else {}), **self.timings}

    def save(self, **values) -> None:
        _log_update(self.settings, self.publish_id, timings=self._merged(), **values)


def prepare(settings: Settings, *, spark=None,
            factors: Path | None = None) -> int:
    """Step 1: score the champion and build every recs table in ``recs_build``.

    Returns:
        The publish id (its ``ops.publish_log`` row is ``building``).
    """
    from spark_jobs import registry
    from spark_jobs.score import ScoreConfig, score
    from spark_jobs.snapshot import export_snapshot

    config = settings.publish
    warehouse.ensure(settings)
    started = time.perf_counter()
    factors = factors or registry.export_champion(settings)
    champion = json.loads((factors.parent / "champion.json").read_text())
    _wait_for_other_builds(settings)
    with warehouse.writer_lock(settings, "publish") as conn:
        with conn, conn.cursor() as cur:
            _supersede_builds(cur)
            publish_id = _log_start(cur, settings, "publish", model_name=champion["model_name"],
                                    model_version=champion["version"],
                                    run_id=champion.get("run_id"))
        steps = _Steps(settings, publish_id)
        steps.timings["export_champion"] = round(time.perf_counter() - started, 3)
        log.info("publish %d: model %s v%s", publish_id, champion["model_name"],
                 champion["version"])
        work = None
        try:
            work = Path(tempfile.mkdtemp(prefix="mfy-publish-", dir=settings.home))
            snapshot = steps.run("export_seen", export_snapshot, settings, work / "snapshot")
            if spark is None:
                from spark_jobs.session import get_spark
                spark = get_spark(settings.home, app_name="moviesforyou-score",
                                  spark=settings.spark)
            with conn.cursor() as cur:
                since = live_refreshed_since(cur, settings, champion)
            if since is not None:
                log.info("publish %d: v%s refreshes the live v%s: scoring only the users "
                         "who rated since %d", publish_id, champion["version"],
                         champion["refresh_of"], since)
            scored = steps.run("score", score, spark, factors, snapshot.path, work / "scored",
                               ScoreConfig(n=config.n, similar_n=config.similar_n,
                                           min_ratings=config.similar_min_ratings,
                                           similarity=config.similarity),
                               rated_after=since,
                               genres=movie_genres(conn) if since is None else None,
                               tags=movie_tags(conn) if since is None else None)
            counts = steps.run("build", build, conn, settings, publish_id=publish_id,
                               champion=champion, factors=factors, scored=scored)
            counts["users_scored"] = scored.users  # the rest copied from the live publish
        except BaseException as exc:
            conn.rollback()
            steps.failed(exc)
            raise
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
    steps.save(row_counts=counts)
    return publish_id


def _open_builds(settings: Settings) -> list[tuple[int, object]]:
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select publish_id, started_at from ops.publish_log "
                    "where status = 'building' and action = 'publish' order by publish_id")
        return cur.fetchall()


def _wait_for_other_builds(settings: Settings) -> None:
    """A publish builds, validates and swaps in three steps (three DAG tasks), each under
    the writer lock but not between them. A second publish that began meanwhile would
    replace ``recs_build`` under the first; so it waits, up to ``MFY_WRITER_WAIT``, for
    other builds to go live or fail. One still ``building`` after that lost its process
    or its server, and :func:`_supersede_builds` closes it."""
    deadline, told = time.monotonic() + settings.writer_wait, False
    while (open_builds := _open_builds(settings)) and time.monotonic() < deadline:
        if not told:
            log.info("publish waits for publish %s (building since %s) to go live or fail",
                     open_builds[-1][0], open_builds[-1][1])
            told = True
        time.sleep(min(2.0, max(0.05, deadline - time.monotonic())))


def _supersede_builds(cur) -> None:
    """Mark builds that never went live failed: this publish rebuilds ``recs_build``."""
    cur.execute("""update ops.publish_log
                   set status = 'failed', finished_at = now(),
                       error = 'superseded: still building when a newer publish began (its '
                               || 'process or the warehouse stopped before it went live)'
                   where status = 'building' and action = 'publish' returning publish_id""")
    for (publish_id,) in cur.fetchall():
        log.warning("publish %s never went live: marked failed", publish_id)


def _building(cur, publish_id: int) -> None:
    """Check that ``recs_build`` holds this publish's tables, ready to validate or swap."""
    cur.execute("select to_regclass('recs_build.publication') is not null")
    built = None
    if cur.fetchone()[0]:
        cur.execute("select publish_id from recs_build.publication")
        row = cur.fetchone()
        built = row[0] if row else None
    if built != publish_id:
        raise PublishError(f"recs_build holds publish {built}, not {publish_id}: "
                           "run the publish again")


def validate_build(settings: Settings, publish_id: int) -> quality.Report:
    """Step 2: the recs suite on ``recs_build``. A failure drops the build and raises."""
    config = settings.publish
    steps = _Steps(settings, publish_id)
    try:
        with contextlib.closing(warehouse.connect(settings)) as conn:
            with conn, conn.cursor() as cur:
                _building(cur, publish_id)
            report = steps.run("validate", quality.validate, settings, "recs", schema=BUILD,
                               params={"n": config.n}, raise_on_failure=False,
                               subject=f"publish:{publish_id}")
            if not report.success:
                with conn, conn.cursor() as cur:
                    drop_schema_tables(cur, BUILD)
                raise quality.ValidationFailed(report)
    except BaseException as exc:
        steps.failed(exc)
        raise
    steps.save(validation=report.as_json())
    return report


def go_live(settings: Settings, publish_id: int) -> PublishResult:
    """Step 3: swap a validated build in, refresh the SQL functions, prune old versions."""
    config = settings.publish
    steps = _Steps(settings, publish_id)
    with warehouse.writer_lock(settings, "publish") as conn:
        try:
            with conn.cursor() as cur:
                _building(cur, publish_id)
                cur.execute("select validation, model_version, row_counts "
                            "from ops.publish_log where publish_id = %s", (publish_id,))
                validation, version, counts = cur.fetchone()
            conn.rollback()
            if not (validation or {}).get("success"):
                raise PublishError(f"publish {publish_id} has not passed validation")
            lock_ms, wait_ms = _swap(conn, config, incoming_schema=BUILD, incoming_suffix="",
                                     new_live=publish_id, log_sql=[])
            steps.timings["swap_wait"] = round(wait_ms / 1000, 3)
            steps.run("functions", _create_functions, conn)
            dropped = _prune(conn, config.keep)
        except BaseException as exc:
            conn.rollback()
            steps.failed(exc)
            raise
    steps.save(finished_at="now", swap_lock_ms=lock_ms)
    log.info("publish %d live: %s; swap held its locks %.1f ms; dropped old versions %s",
             publish_id, counts, lock_ms, dropped or "none")
    return PublishResult(publish_id, version, counts, steps._merged(), lock_ms, validation)


def publish(settings: Settings, *, spark=None,
            factors: Path | None = None) -> PublishResult:
    """All three steps. Raises, and changes nothing live, on any failure."""
    publish_id = prepare(settings, spark=spark, factors=factors)
    validate_build(settings, publish_id)
    return go_live(settings, publish_id)


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
        lock_ms, _ = _swap(conn, config, incoming_schema=HISTORY, incoming_suffix=f"__p{target}",
                           new_live=target, log_sql=[(
                               """insert into ops.publish_log (action, status, dataset,
                                      model_name, model_version, finished_at, went_live_at,
                                      metrics, swap_lock_ms)
                                  values ('rollback', 'archived', %s, %s, %s, now(), now(),
                                          %s, %s)""",
                               (settings.dataset, name, version,
                                json.dumps({"restored_publish_id": target,
                                            "replaced_publish_id": live}), None))])
        _create_functions(conn)
    log.info("rolled back: publish %d (model v%s) is live again, replacing %s", target, version,
             live)
    return target, lock_ms
