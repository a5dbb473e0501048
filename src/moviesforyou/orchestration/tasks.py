"""What every Airflow task of the project does around its step.

:func:`run` builds the run's settings (:func:`settings_from_airflow`), calls the
step (a plain function of :mod:`~moviesforyou.orchestration.pipeline`,
:mod:`~moviesforyou.orchestration.training`, :mod:`~moviesforyou.orchestration.summary`
or :mod:`~moviesforyou.orchestration.freshness`) and, when it fails, keeps the
message for the run summary (XCom key ``error``). A run whose conf says
``fail_fast`` fails the task at once, without retries, and so does an error a retry
cannot mend (``retry_helps`` false: bad data); anything else, a killed runner
included, gets the DAG's retries.

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
import os
from collections.abc import Callable
from typing import Any

from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration.summary import record_error

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


def run(step: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``step(settings, *args, **kwargs)`` as this Airflow task."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    try:
        return step(settings_from_airflow(), *args, **kwargs)
    except Exception as exc:
        record_error(context["ti"], exc)
        if (context["dag_run"].conf or {}).get("fail_fast") \
                or not getattr(exc, "retry_helps", True):
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        raise
