"""The promotion ledger, ``ops.model_promotions``: every gate decision and rollback.

The gate (:mod:`spark_jobs.gate`) decides and moves MLflow's alias; the
orchestration step that ran it appends the decision here, where the Health
dashboard and ``moviesforyou models history`` read it.
"""

from __future__ import annotations

import contextlib
import json

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings


def record(settings: Settings, *, challenger: str | None, before: str | None,
           after: str | None, promoted: bool, action: str, reason: str,
           dataset: str | None = None, snapshot_digest: str | None = None,
           metrics: dict | None = None, run_id: str | None = None,
           warning: str | None = None) -> None:
    """Append one decision."""
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            """insert into ops.model_promotions (model_name, challenger_version,
                   champion_version_before, champion_version_after, promoted, action, reason,
                   dataset, snapshot_digest, metrics, mlflow_run_id, warning)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (settings.training.model_name, challenger, before, after, promoted, action, reason,
             dataset, snapshot_digest, json.dumps(metrics or {}), run_id, warning))


def record_decision(settings: Settings, decision) -> None:
    """Append a gate's :class:`spark_jobs.gate.Decision`."""
    record(settings, challenger=decision.version, before=decision.champion_before,
           after=decision.champion_after, promoted=bool(decision.promoted),
           action=decision.action, reason=decision.reason, dataset=decision.dataset,
           snapshot_digest=decision.snapshot_digest,
           metrics={"challenger": decision.challenger_metrics,
                    "champion": decision.champion_metrics},
           run_id=decision.run_id, warning=decision.warning)


def history(settings: Settings, limit: int = 50) -> list[tuple]:
    """Champion decisions, newest first."""
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute(
            """select promotion_id, decided_at, action, challenger_version,
                      champion_version_before, champion_version_after, promoted, reason
               from ops.model_promotions where model_name = %s
               order by promotion_id desc limit %s""", (settings.training.model_name, limit))
        return cur.fetchall()
