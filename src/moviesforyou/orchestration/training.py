"""The nightly training steps, as the Airflow DAG's ``train_als`` and ``gate_model`` run them.

* **Tune, refresh or re-fit.** On the tuning day (``MFY_TUNE_DAY``, Sundays by
  default), or when there is no champion of this release yet, the ALS grids are
  searched. Other nights refresh the champion: its movie factors kept, the users
  with new ratings re-solved in NumPy (:mod:`spark_jobs.refresh`, seconds instead
  of a Spark fit); past ``MFY_REFRESH_MAX_NEW`` new ratings, or with
  ``MFY_REFIT=full``, the champion's configuration is re-fit in Spark
  (:func:`tune_today`, :func:`train_als`).
* **Gate separately.** Training registers a challenger; the gate
  (:mod:`spark_jobs.gate`, the one place that decides) runs as its own step
  (:func:`gate_model`) on the very same splits, so a failed gate can be retried
  without retraining. This step appends the decision to the promotion ledger
  (:mod:`moviesforyou.orchestration.ledger`).
* **The same on a cluster.** ``spark-submit .../orchestration/train_job.py
  --snapshot … --date …`` (what :class:`moviesforyou.orchestration.spark_submit.TrainOnSpark`
  runs) trains exactly as the in-process task does; the task then reads the
  result back from MLflow (:func:`trained_on_snapshot`).

Spark, MLflow and the training stage are imported inside the steps: the DAG file
imports this module when it is parsed.

Every function returns a small JSON-able dict for XCom and the run summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from moviesforyou.foundation.config import Settings, on_weekday
from moviesforyou.orchestration import ledger

log = logging.getLogger(__name__)

#: Tuning keys of the run's conf: any of them means "tune as told".
_TUNING_KEYS = ("explicit", "implicit", "explicit_grid", "implicit_grid")


def run_overrides(settings: Settings, overrides: dict | None) -> dict:
    """The run conf's training settings, or ``MFY_TRAIN_CONF``'s (the Airflow variable
    ``mfy_train_conf``) when the conf has none."""
    if overrides:
        return overrides
    return json.loads(settings.training.train_conf) if settings.training.train_conf else {}


def tune_today(settings: Settings, logical_date, overrides: dict | None = None) -> bool:
    """Whether this run tunes the ALS grids or re-trains the champion's configuration.

    ``settings.training.tune_day`` (``MFY_TUNE_DAY``): a weekday (``sun``, the
    default), ``always`` or ``never``; a conf with ``{"tune": true}`` or explicit
    grids/params decides instead.
    """
    overrides = overrides or {}
    if "tune" in overrides:
        return bool(overrides["tune"])
    if any(key in overrides for key in _TUNING_KEYS):
        return True
    return on_weekday(settings.training.tune_day, logical_date)


def train_als(settings: Settings, snapshot: dict, overrides: dict | None = None, *,
              logical_date=None) -> dict:
    """Register a challenger trained on the snapshot (no gate).

    On tuning days (:func:`tune_today`) the grids are searched; other nights refresh
    the champion (:func:`spark_jobs.refresh.refresh`) or, when a refresh will not do,
    re-fit its configuration on the new data.
    """
    from spark_jobs import registry
    from spark_jobs.config import train_config
    from spark_jobs.refresh import refresh
    from spark_jobs.snapshot import read_kept_snapshot
    from spark_jobs.train import train as train_models

    overrides = run_overrides(settings, overrides)
    tuning = tune_today(settings, logical_date, overrides)
    config = train_config(overrides)
    kept = read_kept_snapshot(Path(snapshot["path"]))
    if not tuning:
        champion = registry.champion_params(settings)
        if champion is None:
            tuning = True
            log.info("no champion of %s yet: tuning", settings.dataset)
        else:
            if settings.training.refit == "refresh":
                refreshed = refresh(settings, kept, max_new=settings.training.refresh_max_new,
                                    k=config.k, threshold=config.relevance_threshold)
                if refreshed is not None:
                    return refreshed
            config = dataclasses.replace(config, explicit=champion[0], implicit=champion[1])
            log.info("re-training the champion's configuration: %s; %s",
                     champion[0].label(), champion[1].label())
    result = train_models(settings, config, snapshot=kept, gate=False)
    log.info("challenger v%s (run %s): %s", result.version, result.run_id, result.metrics)
    return {"version": result.version, "run_id": result.run_id, "metrics": result.metrics,
            "baselines": result.baselines, "tuned": tuning,
            "explicit": dataclasses.asdict(result.explicit),
            "implicit": dataclasses.asdict(result.implicit)}


def _version_trained_on(settings: Settings, digest: str) -> tuple[object, str]:
    """(MLflow client, the newest model version trained on the snapshot ``digest``)."""
    from spark_jobs import registry

    client = registry.configure(settings)
    version = registry.version_for_snapshot(settings, client, digest)
    if version is None:
        raise RuntimeError(f"no model version was trained on snapshot {digest}")
    return client, version


def trained_on_snapshot(settings: Settings, digest: str) -> dict:
    """What :func:`train_als` returns, read back from MLflow, for training that ran in
    another process (spark-submit): the newest version trained on the snapshot."""
    import mlflow

    from spark_jobs import registry

    client, version = _version_trained_on(settings, digest)
    run_id = client.get_model_version(registry.model_name(settings), version).run_id
    return {"version": version, "run_id": run_id,
            "metrics": client.get_run(run_id).data.metrics,
            "baselines": mlflow.artifacts.load_dict(f"runs:/{run_id}/baselines.json")}


def gate_model(settings: Settings, trained: dict | None, snapshot: dict,
               overrides: dict | None = None) -> dict:
    """The champion gate for the challenger trained in this run.

    ``trained`` is the training task's XCom; without one, the challenger is the
    newest version trained on this run's snapshot.
    """
    from spark_jobs.config import train_config
    from spark_jobs.gate import gate_challenger

    version = ((trained or {}).get("version")
               or _version_trained_on(settings, snapshot["digest"])[1])
    decision = gate_challenger(settings, version,
                               train_config(run_overrides(settings, overrides)))
    ledger.record_decision(settings, decision)
    return {"version": version, "promoted": decision.promoted, "reason": decision.reason,
            "champion_before": decision.champion_before, "warning": decision.warning,
            "champion": version if decision.promoted else decision.champion_before}


def train_and_gate(settings: Settings, config=None, *, spark=None, snapshot=None):
    """``moviesforyou train``: train, gate in the same run, and record the decision.

    Returns:
        :class:`spark_jobs.train.TrainResult`.
    """
    from spark_jobs.train import train

    result = train(settings, config, spark=spark, snapshot=snapshot)
    ledger.record_decision(settings, result.decision)
    return result


def rollback(settings: Settings, version: str, reason: str = "manual rollback") -> str | None:
    """Point ``champion`` at an earlier version and record it. Returns the version it
    replaced."""
    from spark_jobs import registry

    before = registry.rollback(settings, version, reason)
    ledger.record(settings, challenger=None, before=before, after=str(version), promoted=True,
                  action="rollback", reason=reason)
    return before
