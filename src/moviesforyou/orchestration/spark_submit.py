"""Training through the Spark provider's ``SparkSubmitOperator`` (a cluster).

The nightly DAG uses :class:`TrainOnSpark` instead of its in-process
``train_als`` task when ``MFY_SPARK_CONN_ID`` names a Spark connection. The
Spark provider is imported only then, so parsing the DAG stays light.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

#: The job and its arguments: the run's snapshot, its logical date (tuning day or
#: not) and its training conf; ``gate_model`` gates the challenger afterwards.
APPLICATION_ARGS = [
    "--snapshot", "{{ ti.xcom_pull(task_ids='export_snapshot')['path'] }}",
    "--date", "{{ (dag_run.logical_date or dag_run.run_after).isoformat() }}",
    "--config", "{{ (dag_run.conf or {}).get('train', {}) | tojson }}",
]


#: The job, in the checkout.
APPLICATION = ("src", "moviesforyou", "orchestration", "train_job.py")

#: The packages a job imports, by where they are in the checkout.
PACKAGES = {"moviesforyou": Path("src") / "moviesforyou", "spark_jobs": Path("spark_jobs")}


def code_archive(project: str | Path, out: Path) -> Path:
    """Zip the project's packages for ``--py-files``: the executors import from it.

    Built from the checkout at submit time, so a cluster needs no redeploy when
    the code changes; the executors need only a Python with the locked
    dependencies (``PYSPARK_PYTHON``).
    """
    project = Path(project)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for package, folder in PACKAGES.items():
            for path in sorted((project / folder).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, Path(package) / path.relative_to(project / folder))
    return out


class TrainOnSpark(SparkSubmitOperator):
    """``spark-submit src/moviesforyou/orchestration/train_job.py --snapshot … --date …``
    with the run's settings.

    The driver is a new process: the warehouse and MLflow settings that the
    in-process tasks take from Airflow connections and variables are handed to
    it as ``MFY_*`` variables and ``MLFLOW_TRACKING_URI`` (client deploy mode;
    on YARN and Kubernetes the provider passes them to the driver as conf). The
    project's packages go with the job as a zip (``--py-files``); the executors'
    Python is ``PYSPARK_PYTHON`` from the environment (this interpreter on a local
    master).
    """

    def __init__(self, *, project: str, **kwargs) -> None:
        super().__init__(application=os.path.join(project, *APPLICATION),
                         application_args=list(APPLICATION_ARGS), **kwargs)
        self.project = project

    def execute(self, context) -> dict:
        from airflow.sdk import Connection

        from moviesforyou.orchestration import summary, tasks, training
        from spark_jobs import registry

        settings = tasks.settings_from_airflow()
        self.env_vars = {
            **(self.env_vars or {}), **settings.to_env(),
            "MLFLOW_TRACKING_URI": registry.tracking_uri(settings),
            # client mode: the driver runs here, in this environment's Python
            "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
        }
        if str(Connection.get(self._conn_id).host or "").startswith("local"):
            # a local master: the workers run here too, in this environment's Python
            self.env_vars.setdefault("PYSPARK_PYTHON", sys.executable)
        with tempfile.TemporaryDirectory(prefix="mfy-submit-") as folder:
            # the driver and every executor import the project from this archive
            self.py_files = str(code_archive(self.project, Path(folder) / "moviesforyou-code.zip"))
            try:
                super().execute(context)
            except Exception as exc:  # as the in-process steps do: the run summary keeps it
                summary.record_error(context["ti"], exc,
                                      " (the driver's traceback is in this task's log)")
                raise
        # the same XCom as the in-process task, read back from MLflow
        snapshot = context["ti"].xcom_pull(task_ids="export_snapshot")
        return training.trained_on_snapshot(settings, snapshot["digest"])
