"""Training and scoring through the Spark provider (a cluster).

When ``MFY_SPARK_CONN_ID`` names a Spark connection, the nightly DAG uses
:class:`TrainOnSpark` (the provider's ``SparkSubmitOperator``) instead of its
in-process ``train_als`` task, and ``score_recs`` scores through
:class:`ScoreOnCluster`, which submits ``score_job.py`` with the provider's hook.
Both ship the same code archive, set the same environment and check the executors
first; both hand data over through shared storage (``MFY_HOME``: the snapshot,
the champion's factors, the scored lists). The Spark provider is imported only
then, so parsing the DAG stays light.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from moviesforyou.foundation.config import Settings

#: The job and its arguments: the run's snapshot, its logical date (tuning day or
#: not) and its training conf; ``gate_model`` gates the challenger afterwards.
APPLICATION_ARGS = [
    "--snapshot", "{{ ti.xcom_pull(task_ids='export_snapshot')['path'] }}",
    "--date", "{{ (dag_run.logical_date or dag_run.run_after).isoformat() }}",
    "--config", "{{ (dag_run.conf or {}).get('train', {}) | tojson }}",
]


#: The jobs, in the checkout.
APPLICATION = ("src", "moviesforyou", "orchestration", "train_job.py")
SCORE_APPLICATION = ("src", "moviesforyou", "orchestration", "score_job.py")

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


def submit_env(settings: Settings, conn_id: str,
               configured: dict | None = None) -> dict[str, str]:
    """What a submitted driver needs, over the job's ``configured`` variables: the run's
    settings as ``MFY_*`` variables, the MLflow URI and the Pythons."""
    from airflow.sdk import Connection

    from spark_jobs import registry

    env = {
        **(configured or {}), **settings.to_env(),
        "MLFLOW_TRACKING_URI": registry.tracking_uri(settings),
        # client mode: the driver runs here, in this environment's Python
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
    }
    if str(Connection.get(conn_id).host or "").startswith("local"):
        # a local master: the workers run here too, in this environment's Python
        env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


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
        from moviesforyou.orchestration import summary, tasks, training

        settings = tasks.settings_from_airflow()
        self.env_vars = submit_env(settings, self._conn_id, self.env_vars)
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


@dataclass
class ScoreOnCluster:
    """The publishing stage's :class:`~moviesforyou.publishing.publish.Scorer`, submitted
    to the Spark connection ``conn_id`` as training is (``score_job.py``).

    The seen-ratings snapshot is a Postgres COPY (no Spark) and stays here. The
    champion's factors, the snapshot and the content signals go to the job through
    shared storage (the publish's work folder under ``MFY_HOME``), and the scored
    lists come back the same way, with the job's ``score_result.json``.
    """

    settings: Settings
    conn_id: str
    project: str

    def seen(self, work: Path) -> Path:
        from spark_jobs.snapshot import export_snapshot

        return export_snapshot(self.settings, work).path

    def score(self, factors: Path, seen: Path, out: Path, *, rated_after: int | None,
              genres, tags, similar: bool = True):
        from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

        from spark_jobs.score import ScoreResult

        out.mkdir(parents=True, exist_ok=True)
        inputs = out / "content.pickle"
        inputs.write_bytes(pickle.dumps({"genres": genres, "tags": tags}))
        args = ["--factors", str(factors), "--seen", str(seen), "--out", str(out),
                "--content", str(inputs)]
        if rated_after is not None:
            args += ["--rated-after", str(rated_after)]
        if not similar:
            args += ["--no-similar"]
        with tempfile.TemporaryDirectory(prefix="mfy-submit-") as folder:
            hook = SparkSubmitHook(
                conn_id=self.conn_id, name="moviesforyou-score", application_args=args,
                env_vars=submit_env(self.settings, self.conn_id),
                py_files=str(code_archive(self.project,
                                          Path(folder) / "moviesforyou-code.zip")))
            hook.submit(application=os.path.join(self.project, *SCORE_APPLICATION))
        done = json.loads((out / "score_result.json").read_text())
        return ScoreResult(Path(done["user_recommendations"]),
                           Path(done["similar_movies"]) if done["similar_movies"] else None,
                           int(done["users"]), float(done["seconds"]))
