"""Publish the recommendations: build beside the live tables, validate, swap in one step.

Input: the champion in the MLflow registry and the marts dbt built.
Output: the ``recs`` tables, the SQL functions on them, and a row in
``ops.publish_log``.

1. **Build.** The champion's factors are scored (by Spark, which the
   orchestration hands in as a :class:`Scorer`: ``spark_jobs.score``) and COPYed,
   with the cold-start lists and the catalogue (dbt's ``mart_cold_start_lists``
   and ``mart_movie_catalogue``), into ``recs_build``, a schema readers never
   look at. The tables' DDL is ``sql/recs_*.sql``. When the champion is a refresh
   of the live publish's model (``spark_jobs.refresh``: same movie factors, only
   the users who rated since re-solved), only those users are scored; every
   other list and every movie's neighbours are copied from the live tables:
   their factors did not change (the rating counts behind neighbour eligibility
   and the popular fallback are the live publish's).
2. **Validate.** The ``recs`` suite (``expectations/recs.yml``) runs on the
   build schema (the audit the orchestration hands in). A failure records the
   result, drops the build, raises :class:`~moviesforyou.quality.checks.ValidationFailed`
   and leaves the live tables as they were.
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
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg2
from psycopg2 import sql

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.publishing.arms import Challenger, seen_of_arm
from moviesforyou.publishing.recs_build import (
    BUILD,
    build,
    drop_schema_tables,
    live_refreshed_since,
    movie_genres,
    movie_tags,
)
from moviesforyou.publishing.swap import (  # noqa: F401 (the publish's own names)
    PublishError,
    create_functions,
    dot_function_sql,
    functions_sql,
    history_versions,
    live_publish_id,
    prune,
    rollback,
    swap,
    versions,
)

log = logging.getLogger(__name__)



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
        report = getattr(exc, "report", None)  # a failed audit carries its report
        validation = report.as_json() if report is not None else None
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


class Scorer(Protocol):
    """What the publish needs scored: the orchestration hands in Spark's scoring
    (:mod:`moviesforyou.orchestration.recs_publish`), so this stage imports no Spark."""

    def seen(self, work: Path) -> Path:
        """Every user's rated movies, written under ``work``; returns the Parquet path."""

    def score(self, factors: Path, seen: Path, out: Path, *, rated_after: int | None,
              genres, tags, similar: bool = True) -> Any:
        """Top-N lists and (with ``similar``) similar movies, written under ``out``;
        returns the scored folders and ``users``, the number of users scored."""


def prepare(settings: Settings, *, factors: Path, scorer: Scorer,
            export_seconds: float = 0.0, challenger: Challenger | None = None) -> int:
    """Step 1: score the champion and build every recs table in ``recs_build``.

    Args:
        factors: the champion's factor folder, with ``champion.json`` beside it.
        scorer: scores it (:class:`Scorer`).
        export_seconds: how long fetching the champion took (kept with the timings).
        challenger: a running experiment's arm (:mod:`moviesforyou.publishing.arms`):
            its viewers are scored by the challenger and get its lists.

    Returns:
        The publish id (its ``ops.publish_log`` row is ``building``).
    """
    warehouse.ensure(settings)
    champion = json.loads((factors.parent / "champion.json").read_text())
    with _lock_for_a_new_build(settings) as conn:
        with conn, conn.cursor() as cur:
            _supersede_builds(cur)
            publish_id = _log_start(cur, settings, "publish", model_name=champion["model_name"],
                                    model_version=champion["version"],
                                    run_id=champion.get("run_id"))
        steps = _Steps(settings, publish_id)
        steps.timings["export_champion"] = round(export_seconds, 3)
        if challenger is not None:
            _log_update(settings, publish_id, experiment=challenger.experiment.name)
        log.info("publish %d: model %s v%s", publish_id, champion["model_name"],
                 champion["version"])
        work = None
        try:
            work = Path(tempfile.mkdtemp(prefix="mfy-publish-", dir=settings.home))
            seen = steps.run("export_seen", scorer.seen, work / "snapshot")
            with conn.cursor() as cur:
                since = live_refreshed_since(cur, settings, champion,
                                             challenger.experiment if challenger else None)
            if since is not None:
                log.info("publish %d: v%s refreshes the live v%s: scoring only the users "
                         "who rated since %d", publish_id, champion["version"],
                         champion["refresh_of"], since)
            scored = steps.run("score", scorer.score, factors, seen, work / "scored",
                               rated_after=since,
                               genres=movie_genres(conn) if since is None else None,
                               tags=movie_tags(conn) if since is None else None)
            if challenger is not None:  # its viewers only, and no similar movies
                arm_seen = steps.run("export_seen_challenger", seen_of_arm, seen,
                                     work / "snapshot_challenger", challenger.experiment)
                challenger.scored = steps.run(
                    "score_challenger", scorer.score, challenger.factors, arm_seen,
                    work / "scored_challenger", rated_after=None, genres=None, tags=None,
                    similar=False)
            counts = steps.run("build", build, conn, settings, publish_id=publish_id,
                               champion=champion, factors=factors, scored=scored,
                               challenger=challenger)
            counts["users_scored"] = scored.users  # the rest copied from the live publish
        except BaseException as exc:
            conn.rollback()
            steps.failed(exc)
            raise
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        # still under the lock: a build without row counts is one still in this step
        # or one whose process died in it (_open_builds)
        steps.save(row_counts=counts)
    return publish_id


#: Builds that finished step 1 and wait for their validation and swap. One without row
#: counts is still in step 1, holding the writer lock, or died there, its lock gone
#: with its session.
_OPEN_BUILDS = """select publish_id, started_at from ops.publish_log
                  where status = 'building' and action = 'publish'
                      and row_counts <> '{}'::jsonb order by publish_id"""


def _open_builds(settings: Settings) -> list[tuple[int, object]]:
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute(_OPEN_BUILDS)
        return cur.fetchall()


def _wait_for_other_builds(settings: Settings, deadline: float) -> None:
    told = False
    while (open_builds := _open_builds(settings)) and time.monotonic() < deadline:
        if not told:
            log.info("publish waits for publish %s (building since %s) to go live or fail",
                     open_builds[-1][0], open_builds[-1][1])
            told = True
        time.sleep(min(2.0, max(0.05, deadline - time.monotonic())))


@contextlib.contextmanager
def _lock_for_a_new_build(settings: Settings):
    """The writer lock, once no other build waits for its validation and swap.

    A publish builds, validates and swaps in three steps (three DAG tasks), each under
    the writer lock but not between them. A second publish that began meanwhile would
    replace ``recs_build`` under the first; so it waits, up to ``MFY_WRITER_WAIT``, for
    other builds to go live or fail, and checks again once it holds the lock (another
    build may have finished its first step while this one waited for the lock). A
    build still in step 1 when this one holds the lock died there (its lock went with
    its session), and one still ``building`` after the wait lost its process or its
    server: :func:`_supersede_builds` closes both. So the retry of a task killed in
    step 1 goes on at once."""
    deadline = time.monotonic() + settings.writer_wait
    while True:
        _wait_for_other_builds(settings, deadline)
        with warehouse.writer_lock(settings, "publish") as conn:
            with conn, conn.cursor() as cur:
                cur.execute(_OPEN_BUILDS)
                waiting = cur.fetchall()
            if not waiting or time.monotonic() >= deadline:
                yield conn
                return


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


def validate_build(settings: Settings, publish_id: int,
                   audit: Callable[[str], Any]) -> Any:
    """Step 2: audit ``recs_build``. A failed audit drops the build and raises.

    Args:
        audit: runs the recs suite on a schema and returns its report (``success``,
            ``as_json()``); when the suite fails it raises an exception carrying the
            report as ``.report`` (the quality stage's ``ValidationFailed``).
    """
    steps = _Steps(settings, publish_id)
    try:
        with contextlib.closing(warehouse.connect(settings)) as conn:
            with conn, conn.cursor() as cur:
                _building(cur, publish_id)
            try:
                report = steps.run("validate", audit, BUILD)
            except Exception as exc:
                if getattr(exc, "report", None) is not None:  # the suite failed
                    with conn, conn.cursor() as cur:
                        drop_schema_tables(cur, BUILD)
                raise
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
            lock_ms, wait_ms = swap(conn, config, incoming_schema=BUILD, incoming_suffix="",
                                    new_live=publish_id, log_sql=[])
            steps.timings["swap_wait"] = round(wait_ms / 1000, 3)
            steps.run("functions", create_functions, conn)
            dropped = prune(conn, config.keep)
        except BaseException as exc:
            conn.rollback()
            steps.failed(exc)
            raise
    steps.save(finished_at="now", swap_lock_ms=lock_ms)
    log.info("publish %d live: %s; swap held its locks %.1f ms; dropped old versions %s",
             publish_id, counts, lock_ms, dropped or "none")
    return PublishResult(publish_id, version, counts, steps._merged(), lock_ms, validation)
