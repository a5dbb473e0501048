"""The nightly pipeline's steps, one function per Airflow task of ``movielens_nightly``.

The training steps (``train_als``, ``gate_model``) are in
:mod:`moviesforyou.orchestration.training`, the run summary (``write_summary``) in
:mod:`moviesforyou.orchestration.summary`; the freshness DAG's steps in
:mod:`moviesforyou.orchestration.freshness`.

Each step takes :class:`~moviesforyou.foundation.config.Settings`, does one thing, logs its
progress as plain lines (Airflow's task log) and returns a small JSON-able dict
for XCom and the run summary. The DAG file only wires them together; tests can
call them directly.

Each step's settings come from Airflow's connections and variables
(:mod:`moviesforyou.orchestration.tasks`).
"""

from __future__ import annotations

import contextlib
import logging
import time

from moviesforyou.foundation import releases, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.ingestion import ingest, ledger, sources
from moviesforyou.orchestration import recs_publish
from moviesforyou.quality import checks
from moviesforyou.transformation import transform

log = logging.getLogger(__name__)

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
    features = (releases.features_of(result.layout, result.files).as_dict()
                if result.layout else None)
    log.info("ingest %s: %s, %s; the release has %s", settings.dataset, result.status,
             result.row_counts, features)
    return {"load_id": result.load_id, "status": result.status, "features": features,
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
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("select count(*) from marts.fct_ratings where dataset = %s",
                    (settings.dataset,))
        rows = cur.fetchone()[0]
        # duplicate catalogue entries merged into their film: counted in the load ledger
        cur.execute("select count(*) from intermediate.int_movie_merges "
                    "where dataset = %s and movie_id <> canonical_movie_id", (settings.dataset,))
        merged = cur.fetchone()[0]
        ledger.record_merges(cur, settings.dataset, merged)
    log.info("%d catalogue entries merged into the film they duplicate", merged)
    return {"dbt": summary.build.counts(), "fct_ratings": rows, "merged_entries": merged,
            "seconds": round(time.time() - started, 2)}


def export_snapshot(settings: Settings) -> dict:
    from spark_jobs.snapshot import export_and_keep_snapshot

    snapshot = export_and_keep_snapshot(settings)
    log.info("snapshot %s: %d ratings, %d users, %d movies", snapshot.digest, snapshot.rows,
             snapshot.users, snapshot.movies)
    return {"path": str(snapshot.path.parent), "digest": snapshot.digest, "rows": snapshot.rows,
            "users": snapshot.users, "movies": snapshot.movies}


def score_recs(settings: Settings) -> dict:
    """Score the champion and build the recs tables beside the live ones; with
    ``MFY_SPARK_CONN_ID`` set, the scoring is submitted to that cluster, as training is."""
    return {"publish_id": recs_publish.prepare(settings, submit=True)}


def validate_recs(settings: Settings, scored: dict) -> dict:
    return recs_publish.validate_build(settings, scored["publish_id"]).as_json()


def publish_recs(settings: Settings, scored: dict) -> dict:
    result = recs_publish.go_live(settings, scored["publish_id"])
    return {"publish_id": result.publish_id, "model_version": result.model_version,
            "row_counts": result.row_counts, "swap_lock_ms": round(result.swap_lock_ms, 2)}
