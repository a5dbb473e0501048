"""Training through the Spark provider's ``SparkSubmitOperator`` (a cluster).

The nightly DAG uses :class:`TrainOnSpark` instead of its in-process
``train_als`` task when ``MFY_SPARK_CONN_ID`` names a Spark connection. The
Spark provider is imported only then, so parsing the DAG stays light.
"""

from __future__ import annotations

import os
import sys

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

#: The job and its arguments: the run's snapshot, its logical date (tuning day or
#: not) and its training conf; ``gate_model`` gates the challenger afterwards.
APPLICATION_ARGS = [
    "--snapshot", "{{ ti.xcom_pull(task_ids='export_snapshot')['path'] }}",
    "--date", "{{ (dag_run.logical_date or dag_run.run_after).isoformat() }}",
    "--config", "{{ (dag_run.conf or {}).get('train', {}) | tojson }}",
]


class TrainOnSpark(SparkSubmitOperator):
    """``spark-submit spark_jobs/nightly.py --snapshot … --date …`` with the run's settings.

    The driver is a new process: the warehouse and MLflow settings that the
    in-process tasks take from Airflow connections and variables are handed to
    it as ``MFY_*`` variables and ``MLFLOW_TRACKING_URI`` (client deploy mode;
    on YARN and Kubernetes the provider passes them to the driver as conf).
    """

    def __init__(self, *, project: str, **kwargs) -> None:
        super().__init__(application=os.path.join(project, "spark_jobs", "nightly.py"),
                         application_args=list(APPLICATION_ARGS), **kwargs)
        self.project = project

    def execute(self, context) -> dict:
        from airflow.sdk import Connection

        from moviesforyou import pipeline
        from spark_jobs import nightly, registry

        settings = pipeline.settings_from_airflow()
        python_path = os.pathsep.join(
            p for p in (self.project, os.environ.get("PYTHONPATH")) if p)
        self.env_vars = {
            **(self.env_vars or {}), **settings.to_env(),
            "MLFLOW_TRACKING_URI": registry.tracking_uri(settings),
            "PYTHONPATH": python_path,
            # client mode: the driver runs here, in this environment's Python
            "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
        }
        if str(Connection.get(self._conn_id).host or "").startswith("local"):
            # a local master: the workers run here too, in this environment's Python
            self.env_vars.setdefault("PYSPARK_PYTHON", sys.executable)
        super().execute(context)
        # the same XCom as the in-process task, read back from MLflow
        snapshot = context["ti"].xcom_pull(task_ids="export_snapshot")
        return nightly.trained_on_snapshot(settings, snapshot["digest"])
