"""Run the dbt project (``dbt_project/``) against the warehouse.

dbt reads its connection from the standard libpq variables (``PGHOST``,
``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``; see
``dbt_project/profiles.yml``). :func:`dbt_env` derives them from
``MFY_WAREHOUSE_URL`` or the embedded warehouse, so dbt always talks to the
same warehouse as the rest of the platform.

``transform`` is the nightly step: source freshness (a warning, never fatal),
``dbt build`` (seeds, models, unit and data tests, in DAG order), then
``dbt docs generate``. Each dbt command runs through ``dbtRunner`` in a child
process whose environment carries the connection (:func:`run_dbt`); dbt's own log
lines ("12 of 58 OK created sql table model marts.dim_movies") are the progress
output. A failing model or test raises :class:`TransformError` with dbt's
messages.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings, find_project_root, on_weekday
from moviesforyou.foundation.errors import MoviesForYouError

log = logging.getLogger(__name__)


class TransformError(MoviesForYouError):
    """dbt failed; the message lists the failing nodes with dbt's own messages."""


def project_dir() -> Path:
    return find_project_root() / "dbt_project"


def dbt_env(settings: Settings) -> dict[str, str]:
    """The environment dbt's profile reads, for this warehouse."""
    parts = urlsplit(warehouse.url(settings))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    env = {
        "PGHOST": query.get("host") or parts.hostname or "127.0.0.1",
        "PGPORT": str(query.get("port") or parts.port or 5432),
        "PGUSER": unquote(parts.username or query.get("user") or settings.owner_role),
        # a URL without a password leaves it to libpq's own PGPASSWORD, as psycopg2 does
        "PGPASSWORD": unquote(parts.password or query.get("password")
                              or os.environ.get("PGPASSWORD", "")),
        "PGDATABASE": unquote(parts.path.lstrip("/") or query.get("dbname") or "moviesforyou"),
        **settings.to_env(),  # env_var('MFY_DATASET'), env_var('MFY_POPULAR_N')
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    return env


def target_dir(settings: Settings) -> Path:
    """Where dbt writes manifest, run results and the docs site."""
    return settings.home / "dbt" / "target"


@dataclass
class DbtRun:
    """The outcome of one dbt command."""

    command: str
    success: bool
    results: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for result in self.results:
            tally[result["status"]] = tally.get(result["status"], 0) + 1
        return tally


def _merged(runs: list[DbtRun]) -> DbtRun:
    """Several dbt builds of one night as one: every node's result, a success if all were."""
    return DbtRun(runs[0].command, all(r.success for r in runs),
                  [result for r in runs for result in r.results])


def run_dbt(settings: Settings, args: list[str], *, check: bool = True) -> DbtRun:
    """Run one dbt command against the warehouse (:func:`run_dbt_commands`).

    Args:
        settings: the warehouse to use.
        args: dbt arguments, e.g. ``["build", "--select", "marts"]``.
        check: raise :class:`TransformError` when dbt reports a failure.
    """
    return run_dbt_commands(settings, [(args, check)])[0]


def run_dbt_commands(settings: Settings, commands: list[tuple[list[str], bool]]
                     ) -> list[DbtRun]:
    """Run dbt commands one after the other in one child process (dbt imported once).

    The child gets the environment dbt's profile reads (:func:`dbt_env`) as its own;
    this process's environment is left as it is. dbt's log lines pass through to this
    process's standard output (the Airflow task log, the console).

    Args:
        commands: (dbt arguments, check) pairs; a failing command whose check is True
            stops the rest and raises :class:`TransformError`.
    """
    target = target_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    common = [
        "--project-dir", str(project_dir()),
        "--profiles-dir", str(project_dir()),
        "--target-path", str(target),
    ]
    env = {**os.environ, **dbt_env(settings), "DBT_LOG_PATH": str(target.parent / "logs")}
    with tempfile.TemporaryDirectory(prefix="mfy-dbt-") as folder:
        spec, result_file = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec.write_text(json.dumps({"commands": [{"args": [*args, *common], "check": check}
                                                 for args, check in commands]}))
        with subprocess.Popen(
                [sys.executable, "-m", "moviesforyou.transformation.dbt_child", str(spec),
                 str(result_file)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                bufsize=1) as child:
            for line in child.stdout:
                sys.stdout.write(line)
            sys.stdout.flush()
        outcomes = json.loads(result_file.read_text()) if result_file.exists() else []
    runs = []
    for (args, check), outcome in zip(commands, outcomes + [None] * len(commands),
                                      strict=False):
        outcome = outcome or {"success": False, "results": [],
                              "exception": f"dbt exited with status {child.returncode}"}
        run = DbtRun(args[0], bool(outcome["success"]), outcome["results"])
        runs.append(run)
        if check and not run.success:
            results = outcome["results"]
            failures = [r for r in results if r["status"] in ("error", "fail", "runtime error")]
            lines = [f"  {r['unique_id']}: {r['status']}: {r['message']}" for r in failures]
            if outcome["exception"]:
                lines.append(f"  {outcome['exception']}")
            detail = "\n".join(lines or ["  (see the dbt log above)"])
            raise TransformError(f"dbt {' '.join(args)} failed:\n{detail}")
    return runs


@dataclass
class TransformSummary:
    build: DbtRun
    freshness: DbtRun
    docs_path: Path

    def model_seconds(self) -> dict[str, float]:
        return {r["unique_id"]: r["seconds"] for r in self.build.results
                if r["unique_id"].startswith("model.")}


def transform(settings: Settings, *, full_refresh: bool = False,
              select: str | None = None, docs: bool = True,
              logical_date=None) -> TransformSummary:
    """The nightly modelling step: freshness check, ``dbt build``, ``dbt docs generate``.

    The build is incremental: fct_ratings adds the new ratings, and the
    aggregates under it add or recompute only what those touched. It is a full
    one (``--full-refresh``, identical rows by ``tests/test_marts_incremental.py``)
    on the first build and after ingest loaded a new version of the release. On
    ``settings.dbt_rebuild_day`` (for a run of that ``logical_date``), and when a new
    app rating predates its user's first counted one (it would move earlier ratings
    between a user's stages), every model is rebuilt in full except fct_ratings and
    what it reads, which take the night's new ratings incrementally first: the
    aggregates are what a full rebuild checks, and fct_ratings, one row per rating
    inserted once, is most of a full build's time at 25M ratings.
    """
    warehouse.ensure(settings)
    # one writer at a time, from choosing full or incremental to the end of the build
    with warehouse.writer_lock(settings, "dbt build"):
        commands: list[tuple[list[str], bool]] = []
        aggregates = False  # rebuild everything downstream of fct_ratings in full
        if not _relation_exists(settings, "marts", "fct_ratings"):
            # dbt's unit tests of an incremental model read its columns from the
            # existing table: create it empty once, then build it in full
            log.info("first build: creating fct_ratings empty for its unit tests")
            commands.append((["run", "--select", "+fct_ratings", "--empty"], True))
            full_refresh = True
        elif not full_refresh and _release_reloaded(settings):
            # merging a whole new release row by row through the indexes is many
            # times slower than rebuilding the table
            log.info("ingest loaded a new version of %s: rebuilding fct_ratings in full",
                     settings.dataset)
            full_refresh = True
        elif (not full_refresh and select is None and logical_date is not None
                and on_weekday(settings.dbt_rebuild_day, logical_date)):
            log.info("weekly full rebuild of the models over fct_ratings "
                     "(MFY_DBT_REBUILD_DAY=%s)", settings.dbt_rebuild_day)
            aggregates = True
        elif not full_refresh and select is None and _late_app_ratings(settings):
            log.info("an app rating predates its user's first counted rating: rebuilding "
                     "the models over fct_ratings in full")
            aggregates = True
        # the after_publish models read the published recs: the follower DAG builds them
        scope = ["--select", select] if select else ["--exclude", "tag:after_publish"]
        if aggregates:
            builds = [(["build", "--select", "+fct_ratings"], True),
                      (["build", "--full-refresh", "--exclude", "+fct_ratings",
                        "tag:after_publish"], True)]
        else:
            builds = [(["build", *(["--full-refresh"] if full_refresh else []), *scope], True)]
        # one child process for the lot: dbt is imported once
        runs = run_dbt_commands(settings, [*commands, (["source", "freshness"], False),
                                           *builds])
        freshness, build = runs[len(commands)], _merged(runs[len(commands) + 1:])
        if not freshness.success:
            log.warning("source freshness: %s", freshness.counts())
    if docs:
        run_dbt(settings, ["docs", "generate"])
    return TransformSummary(build, freshness, target_dir(settings) / "index.html")


def _relation_exists(settings: Settings, schema: str, name: str) -> bool:
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("select to_regclass(%s) is not null", (f"{schema}.{name}",))
            return cur.fetchone()[0]
    finally:
        conn.close()


def _late_app_ratings(settings: Settings) -> bool:
    """True when an app rating not counted yet is older than its user's first counted one.

    A counted rating is never older than its user's first, so no watermark is needed.
    """
    if not _relation_exists(settings, "intermediate", "int_ratings_aggregated_to_users"):
        return False
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """select exists (
                     select 1 from app.ratings
                     join intermediate.int_ratings_aggregated_to_users as counted
                       on counted.user_id = ratings.user_id
                     where ratings.dataset = %s and ratings.rated_at < counted.first_rated_at)""",
                (settings.dataset,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def _release_reloaded(settings: Settings) -> bool:
    """True when ops.source_loads has a newer load of the release than fct_ratings holds."""
    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """select
                     (select coalesce(max(load_id), 0) from ops.source_loads
                      where dataset = %(d)s and status = 'loaded')
                   > (select coalesce(max(load_id), 0) from marts.fct_ratings
                      where dataset = %(d)s and rating_source = 'movielens')""",
                {"d": settings.dataset})
            return cur.fetchone()[0]
    finally:
        conn.close()
