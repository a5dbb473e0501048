"""The SparkSession: ``local[*]`` by default, a cluster when a master URL is set.

Settings (``settings.spark``, from the environment):

| variable | default | meaning |
|---|---|---|
| ``MFY_SPARK_MASTER`` | ``local[*]`` | master URL (``spark://...``, ``yarn``, ``k8s://...``) |
| ``MFY_SPARK_DRIVER_MEMORY`` | ``4g`` | driver memory (the JVM's heap in local mode) |
| ``MFY_SPARK_SHUFFLE_PARTITIONS`` | 2 × cores | ``spark.sql.shuffle.partitions`` |
| ``MFY_SPARK_CHECKPOINT_DIR`` | ``$MFY_HOME/spark/checkpoints`` | needed by ALS (stack) |

Under ``spark-submit`` the master and memory come from spark-submit instead;
``getOrCreate`` keeps them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

from moviesforyou.foundation.config import SparkSettings

log = logging.getLogger(__name__)
# py4j logs each connection it closes at INFO, also from __del__ at interpreter exit
logging.getLogger("py4j").setLevel(logging.WARNING)


def blas_in_use(spark) -> str:
    """Which BLAS Spark's ALS will use: native (OpenBLAS, MKL) or the Java fallback."""
    try:
        blas = spark.sparkContext._jvm.dev.ludovic.netlib.blas.BLAS.getInstance()
        return str(blas.getClass().getName())
    except Exception as exc:  # the class moved between Spark versions
        return f"unknown ({type(exc).__name__})"


class BrokenPySparkInstall(RuntimeError):
    """pyspark's Python files do not match the ones its wheel installed."""


def check_pyspark_install(dist: metadata.Distribution | None = None) -> None:
    """Fail clearly when another package has overwritten pyspark's Python files.

    ``pyspark-client`` (pulled in by some Airflow providers) installs into the same
    ``pyspark/`` folder; a different version of it mixes its Python code with pyspark's
    jars, and Spark then fails deep inside Py4J. Each ``.py`` file is checked against
    the hash in pyspark's ``RECORD`` (about 0.1 s).
    """
    dist = dist or metadata.distribution("pyspark")
    changed = []
    for entry in dist.files or ():
        if entry.suffix != ".py" or entry.hash is None:
            continue
        digest = hashlib.new(entry.hash.mode, entry.locate().read_bytes()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != entry.hash.value:
            changed.append(str(entry))
    if changed:
        raise BrokenPySparkInstall(
            f"{dist.name} {dist.version}: {len(changed)} of its Python files were overwritten by "
            f"another package (first: {changed[0]}); run `uv sync --reinstall-package pyspark`")


def _code_location(_) -> str:
    """Run on an executor: where its Python imports this package from."""
    import spark_jobs

    return spark_jobs.__file__


class ExecutorCodeMissing(RuntimeError):
    """The executors' Python cannot import the project's code."""


def executor_code(spark) -> str:
    """Where an executor's Python worker imports ``spark_jobs`` from (one small task).

    On a cluster the code comes with the job (``--py-files``, see
    :class:`moviesforyou.orchestration.spark_submit.TrainOnSpark`), not from the driver's folder;
    a job checks this first, so a missing archive fails in seconds with this
    message, not deep inside a Python UDF an hour later.
    """
    try:
        return spark.sparkContext.parallelize([0], 1).map(_code_location).collect()[0]
    except Exception as exc:  # Py4JJavaError wraps the worker's ModuleNotFoundError
        said = [line.strip() for line in str(exc).splitlines() if "Error:" in line]
        raise ExecutorCodeMissing(
            f"the executors on {spark.sparkContext.master} cannot import spark_jobs: ship the "
            "project with the job (spark-submit --py-files, as TrainOnSpark does) and give "
            "them a Python with the locked dependencies (PYSPARK_PYTHON); Spark said: "
            f"{(said or [str(exc)])[-1][:300]}") from exc


def get_spark(home: Path, *, app_name: str = "moviesforyou", master: str | None = None,
              spark: SparkSettings | None = None):
    """Create (or reuse) the SparkSession configured for ALS.

    Args:
        home: ``MFY_HOME``; checkpoints and scratch space go under ``home/spark``.
        app_name: shown in the Spark UI.
        master: overrides ``spark.master`` (``MFY_SPARK_MASTER``).
        spark: the settings' Spark part (default: the defaults).
    """
    from pyspark.sql import SparkSession

    spark = spark or SparkSettings()
    check_pyspark_install()
    cores = os.cpu_count() or 2
    scratch = home / "spark"
    checkpoints = spark.checkpoint_dir or scratch / "checkpoints"
    (scratch / "local").mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.driver.memory", spark.driver_memory)
        .config("spark.sql.shuffle.partitions", str(spark.shuffle_partitions or 2 * cores))
        .config("spark.local.dir", str(scratch / "local"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    master = master or spark.master
    # spark-submit starts the JVM first and hands it to Python: it chose the master
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if master or not submitted:
        master = master or "local[*]"
        builder = builder.master(master)
        if master.startswith("local"):
            # Spark's own variables, for the processes it starts: stay on loopback, and
            # run the Python workers in this interpreter, not python3 from PATH
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    session.sparkContext.setCheckpointDir(str(checkpoints))
    log.info("Spark %s on %s; BLAS: %s; checkpoints in %s", session.version,
             session.sparkContext.master, blas_in_use(session), checkpoints)
    return session
