"""The run summary: one row of ``ops.pipeline_runs`` per run, whatever happened.

``write_summary`` is the nightly DAG's last task (trigger rule ``all_done``);
:func:`ending` says in one sentence what is live and why; :func:`record_error`
keeps a failed task's message for it.
"""

from __future__ import annotations

import contextlib
import json
import logging

from moviesforyou.foundation import names, warehouse
from moviesforyou.foundation.config import Settings

log = logging.getLogger(__name__)


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
    warning = gated.get("warning")
    return (f"published publish {published.get('publish_id')} (model "
            f"v{published.get('model_version')}, {model})" + (f"; why: {why}" if why else "")
            + (f"; warning: {warning}" if warning else ""))


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
                                  "features": load.get("features"),
                                  "fct_ratings": marts.get("fct_ratings"),
                                  "merged_entries": marts.get("merged_entries"),
                                  "recs": published.get("row_counts", {})}),
        "metrics": json.dumps({"model": trained.get("metrics", {}),
                               "baselines": trained.get("baselines", {})} if trained else {}),
        "errors": json.dumps(errors),
        "warnings": json.dumps([gated["warning"]] if gated.get("warning") else []),
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
