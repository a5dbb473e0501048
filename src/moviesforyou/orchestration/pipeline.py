"""The nightly pipeline's steps, one function per Airflow task of ``movielens_nightly``.

The training steps (``train_als``, ``gate_model``) and their rules are the
training stage's own: :mod:`spark_jobs.nightly`.

Each step takes :class:`~moviesforyou.foundation.config.Settings`, does one thing, logs its
progress as plain lines (Airflow's task log) and returns a small JSON-able dict
for XCom and the run summary. The DAG file only wires them together; tests can
call them directly.

Configuration follows Airflow conventions (:func:`settings_from_airflow`):

| Airflow | sets | default |
|---|---|---|
| connection ``mfy_warehouse`` (postgres) | ``MFY_WAREHOUSE_URL`` | the embedded warehouse |
| connection ``mfy_mlflow`` (http) | ``MLFLOW_TRACKING_URI`` | SQLite under ``MFY_HOME`` |
| variable ``mfy_dataset`` | ``MFY_DATASET`` | ``ml-100k`` |
| variable ``mfy_source`` | ``MFY_SOURCE`` | GroupLens' URL |
| variable ``mfy_source_sha256`` | ``MFY_SOURCE_SHA256`` | GroupLens' published ``.md5`` |

Connections and variables come from the metadata database or, conventionally,
from ``AIRFLOW_CONN_MFY_WAREHOUSE`` / ``AIRFLOW_VAR_MFY_DATASET`` and so on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from moviesforyou.foundation import names, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.ingestion import ingest, sources
from moviesforyou.orchestration import recs_publish
from moviesforyou.quality import checks
from moviesforyou.transformation import transform

log = logging.getLogger(__name__)

#: Airflow variable -> environment variable.
_VARIABLES = {"mfy_dataset": "MFY_DATASET", "mfy_source": "MFY_SOURCE",
              "mfy_source_sha256": "MFY_SOURCE_SHA256", "mfy_train_conf": "MFY_TRAIN_CONF"}


def settings_from_airflow() -> Settings:
    """Settings from the environment, overridden by the Airflow connections and variables."""
    from airflow.sdk import Connection, Variable
    from airflow.sdk.exceptions import AirflowNotFoundException

    env = dict(os.environ)
    with contextlib.suppress(AirflowNotFoundException):
        conn = Connection.get("mfy_warehouse")
        env["MFY_WAREHOUSE_URL"] = conn.get_uri().replace("postgres://", "postgresql://", 1)
    with contextlib.suppress(AirflowNotFoundException):
        conn = Connection.get("mfy_mlflow")
        scheme = conn.schema or "http"
        env["MLFLOW_TRACKING_URI"] = (
            f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else ""))
    for variable, name in _VARIABLES.items():
        value = Variable.get(variable, default=None)
        if value:
            env[name] = value
    return Settings.from_env(env)


def _every_tenth(label: str):
    """A progress callback that logs at each 10% step."""
    last = {"step": -1}

    def report(done: int, total: int | None) -> None:
        if not total:
            return
        step = min(10, int(10 * done / total))
        if step != last["step"]:
            last["step"] = step
            log.info("%s: %d%% (%s of %s bytes)", label, 10 * step, f"{done:,}", f"{total:,}")

    return report


# --------------------------------------------------------------------------- steps


def extract_source(settings: Settings, *, force: bool = False) -> dict:
    """Download (only when the checksum changed) and write the release into its staging
    schema beside ``raw`` (``validate_raw`` audits it and makes it live)."""
    started = time.time()
    files = sources.open_release(settings, settings.dataset, settings.source,
                                 settings.source_sha256,
                                 on_bytes=_every_tenth(f"download {settings.dataset}"))
    reporters: dict[str, object] = {}

    def on_file(table: str, name: str, done: int, size: int) -> None:
        if table not in reporters:
            reporters[table] = _every_tenth(f"raw.{table} from {name}")
        reporters[table](done, size)

    try:
        warehouse.ensure(settings)
        with warehouse.writer_lock(settings, "ingest") as c:
            result = ingest.stage_release(c, files, settings.dataset, force=force,
                                          progress=on_file)
    finally:
        files.close()
    log.info("ingest %s: %s, %s", settings.dataset, result.status, result.row_counts)
    return {"load_id": result.load_id, "status": result.status,
            "row_counts": result.row_counts, "seconds": round(time.time() - started, 2)}


def validate(settings: Settings, layer: str, *, subject: str | None = None) -> dict:
    """A layer's Great Expectations suites; a failure raises with every failing expectation."""
    try:
        report = checks.validate(settings, layer, subject=subject)
    except checks.ValidationFailed as exc:
        log.error("%s", exc)
        raise
    return report.as_json()


def validate_marts(settings: Settings) -> dict:
    """The marts suites, on what dbt just built."""
    return validate(settings, "marts")


def validate_raw(settings: Settings, load: dict) -> dict:
    """Audit and publish a staged load: the raw suites on its staging schema, then its
    tables swapped in for the live partitions. A load that fails is rejected (kept aside,
    named in the error and the ledger) and the live release stays.

    An unchanged source re-validates nothing: the same load passed before.
    """
    if load.get("status") == "staged":
        with warehouse.writer_lock(settings, "publish raw") as conn:
            published = _published_by_another_run(conn, load["load_id"])
            if published is not None:
                return published
            staged = ingest.staged_load(conn, load["load_id"])
            report = {}

            def audit(staged_load) -> None:
                report.update(checks.audit_load(settings)(staged_load).as_json())

            try:
                loaded = ingest.publish_staged(conn, staged, audit)
            except ingest.LoadRejected as exc:
                log.error("%s", exc)
                raise
        return {**report, "load_id": loaded.load_id, "status": loaded.status,
                "row_counts": loaded.row_counts}
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select max(load_id) from ops.source_loads "
                    "where dataset = %s and status = 'loaded'", (settings.dataset,))
        data_load = cur.fetchone()[0]
    subject = f"load:{data_load}"
    if checks.passed_before(settings, "raw", subject):
        log.info("raw: load %s is unchanged and passed validation before: not re-validated",
                 data_load)
        return {"layer": "raw", "success": True, "skipped": True, "subject": subject,
                "status": "unchanged"}
    return {**validate(settings, "raw", subject=subject), "status": "unchanged"}


def _published_by_another_run(conn, load_id: int) -> dict | None:
    """When two runs went on with one staged load
    (:func:`moviesforyou.ingestion.ingest.stage_release`) and the other run already
    attached it: its result, as this run's."""
    with conn, conn.cursor() as cur:
        cur.execute("""select status, row_counts, error from ops.source_loads
                       where load_id = %s""", (load_id,))
        status, counts, error = cur.fetchone() or (None, None, None)
        cur.execute("""select success from ops.validations where layer = 'raw' and subject = %s
                       order by validated_at desc limit 1""", (f"load:{load_id}",))
        audit = cur.fetchone()
    if status == "loaded":
        log.info("raw: load %s was audited and attached by another run", load_id)
        return {"layer": "raw", "success": bool(audit and audit[0]), "skipped": True,
                "subject": f"load:{load_id}", "load_id": load_id, "status": "loaded",
                "row_counts": counts}
    if status == "rejected":
        raise ingest.LoadRejected(f"load {load_id} was rejected by another run: {error}")
    return None


def check_changes(settings: Settings, load: dict, *, force: bool = False) -> dict:
    """Whether anything new arrived since the last build: a new release load, new app
    ratings, or nothing published yet. Returns {"changed": bool, "reason": str}."""
    reasons = []
    if force:
        reasons.append("forced by the run's conf")
    if load.get("status") in ("staged", "loaded"):
        reasons.append("the source changed")
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('marts.fct_ratings') is not null, "
                    "to_regclass('recs.publication') is not null")
        built, published = cur.fetchone()
        if not built:
            reasons.append("the marts were not built yet")
        else:
            cur.execute("""select (select count(*) from app.ratings where dataset = %(d)s),
                                  (select count(*) from marts.fct_ratings
                                   where dataset = %(d)s and rating_source = 'app')""",
                        {"d": settings.dataset})
            app, modelled = cur.fetchone()
            if app != modelled:
                reasons.append(f"{app - modelled} new app rating(s)")
        if not published:
            reasons.append("nothing was published yet")
    changed = bool(reasons)
    reason = ", ".join(reasons) if changed else (
        "the source is unchanged and no app ratings arrived: training and publishing skipped")
    log.info("changes: %s", reason)
    return {"changed": changed, "reason": reason}


def build_marts(settings: Settings, *, logical_date=None) -> dict:
    """dbt build (models, unit and data tests) and source freshness.

    Incremental, except on the weekly rebuild day for ``logical_date`` and the
    other cases :func:`moviesforyou.transformation.transform.transform` names.
    """
    started = time.time()
    summary = transform.transform(settings, docs=True, logical_date=logical_date)
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from marts.fct_ratings where dataset = %s",
                    (settings.dataset,))
        rows = cur.fetchone()[0]
    return {"dbt": summary.build.counts(), "fct_ratings": rows,
            "seconds": round(time.time() - started, 2)}


def export_snapshot(settings: Settings) -> dict:
    from spark_jobs.snapshot import export_and_keep_snapshot

    snapshot = export_and_keep_snapshot(settings)
    log.info("snapshot %s: %d ratings, %d users, %d movies", snapshot.digest, snapshot.rows,
             snapshot.users, snapshot.movies)
    return {"path": str(snapshot.path.parent), "digest": snapshot.digest, "rows": snapshot.rows,
            "users": snapshot.users, "movies": snapshot.movies}


def score_recs(settings: Settings) -> dict:
    """Score the champion and build the recs tables beside the live ones."""
    publish_id = recs_publish.prepare(settings)
    return {"publish_id": publish_id}


def validate_recs(settings: Settings, scored: dict) -> dict:
    return recs_publish.validate_build(settings, scored["publish_id"]).as_json()


def publish_recs(settings: Settings, scored: dict) -> dict:
    result = recs_publish.go_live(settings, scored["publish_id"])
    return {"publish_id": result.publish_id, "model_version": result.model_version,
            "row_counts": result.row_counts, "swap_lock_ms": round(result.swap_lock_ms, 2)}


def ending(state: str, *, changes: dict, gated: dict, published: dict,
           live: tuple | None, errors: dict[str, str | None], failed: list[str]) -> str:
    """How a run ended, in one sentence: what is live now, and why.

    Args:
        state: ``success``, ``skipped`` or ``failed``.
        changes: ``check_changes``' result (why the run built, or why it skipped).
        gated, published: the gate's and the publish's results ({} when they did not run).
        live: (publish id, model version) live after the run, or None.
        errors: failed task -> its exception message.
        failed: the failed and upstream-failed tasks.
    """
    now_live = (f"publish {live[0]} (model v{live[1]}) stays live" if live
                else "nothing is published yet")
    if state == "failed":
        first = next((t for t in failed if errors.get(t)), None)
        where = ", ".join(t for t in failed if errors.get(t) or t == first) or ", ".join(failed)
        lines = [line.strip(" -") for line in errors.get(first, "").splitlines()]
        message = "; ".join(line for line in lines if line)
        message = message if len(message) <= 400 else message[:399] + "…"
        return (f"failed at {where or 'an unknown task'}"
                + (f": {message}" if message else "") + f"; {now_live}")
    if state == "skipped":
        return f"{changes.get('reason') or 'nothing to do'}; {now_live}"
    promoted = gated.get("promoted")
    model = ("a new champion" if promoted else "the champion, a worse challenger not "
             "promoted" if promoted is False else "the champion")
    why = changes.get("reason")
    return (f"published publish {published.get('publish_id')} (model "
            f"v{published.get('model_version')}, {model})" + (f"; why: {why}" if why else ""))


#: The XCom key under which a failed task keeps its message for the run summary.
ERROR_KEY = "error"


def record_error(ti, exc: BaseException, hint: str = "") -> None:
    """Keep a failed task's message (XCom :data:`ERROR_KEY`); ``write_summary`` stores it
    in ``ops.pipeline_runs.errors`` and the console prints it."""
    ti.xcom_push(key=ERROR_KEY, value=f"{type(exc).__name__}: {exc}{hint}"[:4000])


def write_summary(settings: Settings, *, dag_id: str, run_id: str, logical_date,
                  started_at, tasks: dict[str, dict], results: dict[str, dict | None],
                  state: str, errors: dict[str, str | None] | None = None) -> dict:
    """Upsert this run's row of ``ops.pipeline_runs`` (a re-run replaces it).

    Its ``note`` says how the run ended (:func:`ending`); ``errors`` keeps each
    failed task's exception message.
    """
    errors = {task: message for task, message in (errors or {}).items() if message}
    load = {**(results.get(names.EXTRACT_SOURCE) or {}),
            **(results.get(names.VALIDATE_RAW) or {})}  # staged, then loaded
    marts = results.get(names.BUILD_MARTS) or {}
    trained = results.get(names.TRAIN_ALS) or {}
    gated = results.get(names.GATE_MODEL) or {}
    published = results.get(names.PUBLISH_RECS) or {}
    changes = results.get(names.CHECK_CHANGES) or {}
    row = {
        "dag_id": dag_id, "run_id": run_id, "logical_date": logical_date,
        "dataset": settings.dataset, "state": state, "started_at": started_at,
        "source_status": load.get("status"), "trained": bool(trained),
        "promoted": gated.get("promoted"), "published": bool(published),
        "model_version": published.get("model_version") or gated.get("champion"),
        "publish_id": published.get("publish_id"),
        "tasks": json.dumps(tasks),
        "row_counts": json.dumps({"raw": load.get("row_counts", {}),
                                  "fct_ratings": marts.get("fct_ratings"),
                                  "recs": published.get("row_counts", {})}),
        "metrics": json.dumps({"model": trained.get("metrics", {}),
                               "baselines": trained.get("baselines", {})} if trained else {}),
        "errors": json.dumps(errors),
    }
    failed = sorted(t for t, v in tasks.items() if v.get("state") in ("failed",
                                                                      "upstream_failed"))
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        live = None
        cur.execute("select to_regclass('recs.publication') is not null")
        if cur.fetchone()[0]:
            cur.execute("select publish_id, model_version from recs.publication")
            live = cur.fetchone()
        if not published and live:  # what stays live
            row["model_version"] = row["model_version"] or live[1]
            row["publish_id"] = live[0]
        row["note"] = ending(state, changes=changes, gated=gated, published=published,
                             live=live, errors=errors, failed=failed)
        columns = list(row)
        cur.execute(
            f"insert into ops.pipeline_runs ({', '.join(columns)}) "
            f"values ({', '.join('%(' + c + ')s' for c in columns)}) "
            "on conflict (dag_id, run_id) do update set "
            + ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
            + ", finished_at = now()", row)
    log.info("run summary: %s", {k: v for k, v in row.items() if k not in ("tasks",)})
    return {k: row[k] for k in ("state", "trained", "promoted", "published", "model_version",
                                "publish_id", "note")} | {"errors": errors}


# --------------------------------------------------------------------------- follower DAG


def measure_recs(settings: Settings) -> dict:
    """Coverage and popularity bias of the live recommendations, into ops.recs_quality
    (the dbt models tagged ``after_publish``)."""
    transform.run_dbt(settings, ["build", "--select", "tag:after_publish"])
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("""select q.publish_id, q.catalogue_coverage, q.mean_popularity_percentile,
                              q.share_of_top_10pct
                       from ops.recs_quality as q
                       join recs.publication as pub on pub.publish_id = q.publish_id""")
        publish_id, coverage, percentile, top = cur.fetchone()
    log.info("publish %s: coverage %.1f%%, mean popularity percentile %.2f, %.0f%% from the "
             "top 10%%", publish_id, 100 * coverage, percentile, 100 * top)
    return {"publish_id": publish_id, "catalogue_coverage": coverage,
            "mean_popularity_percentile": percentile, "share_of_top_10pct": top}


class StaleRecommendations(RuntimeError):
    pass


def check_freshness(settings: Settings, max_age_hours: float | None = None) -> dict:
    """How old the served recommendations are; raises past ``max_recs_age_hours``
    (``MFY_MAX_RECS_AGE_HOURS``, 36)."""
    max_age = float(max_age_hours or settings.max_recs_age_hours)
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("""
            insert into ops.freshness_checks (dataset, publish_id, published_hours_ago,
                ratings_through, source_checked_hours_ago, pending_app_ratings, max_age_hours,
                is_fresh)
            select %(d)s, pub.publish_id,
                   extract(epoch from now() - log.went_live_at) / 3600,
                   pub.ratings_through,
                   extract(epoch from now() - (select max(loaded_at) from ops.source_loads
                                               where dataset = %(d)s)) / 3600,
                   (select count(*) from app.ratings where dataset = %(d)s
                        and received_at > coalesce(pub.generated_at, '-infinity')),
                   %(max)s,
                   coalesce(extract(epoch from now() - log.went_live_at) / 3600 <= %(max)s,
                            false)
            from recs.publication as pub
            left join ops.publish_log as log on log.publish_id = pub.publish_id
            returning publish_id, published_hours_ago, pending_app_ratings, is_fresh""",
                    {"d": settings.dataset, "max": max_age})
        publish_id, age, pending, fresh = cur.fetchone()
    result = {"publish_id": publish_id, "published_hours_ago": age,
              "pending_app_ratings": pending, "is_fresh": fresh}
    log.info("freshness: %s", result)
    if not fresh:
        raise StaleRecommendations(f"the live recommendations (publish {publish_id}) are "
                                   f"{age:.1f} h old, over {max_age:g} h")
    return result
