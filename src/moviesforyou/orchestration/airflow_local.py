"""Airflow on one machine: a project-local AIRFLOW_HOME and the nightly DAG run once.

``moviesforyou run`` runs ``airflow dags test movielens_nightly`` with
``AIRFLOW_HOME=$MFY_HOME/airflow`` (SQLite metadata database, created on first
use) and the project's ``dags/`` folder. The run is recorded in that metadata
database, so ``make airflow`` (``airflow standalone`` with the same home) shows
it in the Airflow UI afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from moviesforyou.foundation import names
from moviesforyou.foundation.config import Settings, find_project_root
from moviesforyou.foundation.errors import MoviesForYouError

DAG_ID = names.NIGHTLY_DAG


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment for any airflow command on this project (keeps the caller's)."""
    home = settings.home / "airflow"
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(home))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(find_project_root() / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    env.setdefault("AIRFLOW__API__PORT", "8080")
    env.update(settings.to_env())
    return env


def _airflow_command(*args: str) -> list[str]:
    """The airflow CLI of this environment."""
    return [str(Path(sys.executable).parent / "airflow"), *args]


def ensure_metadata_db(env: dict[str, str]) -> None:
    """Create or upgrade Airflow's metadata database (``airflow db migrate``) once."""
    home = Path(env["AIRFLOW_HOME"])
    marker = home / ".migrated"
    version = _airflow_version()
    if marker.exists() and marker.read_text() == version:
        return
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(_airflow_command("db", "migrate"), env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise MoviesForYouError(f"airflow db migrate failed:\n{done.stderr[-2000:]}")
    marker.write_text(version)


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


#: Lines of `airflow dags test` output that start and end a task (group 1: task id).
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\w+)")
TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\w+)")
#: The task runner's line for a failed try, and the exception line of its traceback.
TASK_FAILED = "Task failed with exception"
EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


class TaskWatch:
    """Follows `airflow dags test` output: which task runs, and whether it failed.

    ``errors`` keeps each failed task's exception line (``SourceError: ...``), for
    when the run's summary row could not be written (e.g. the warehouse is down).
    """

    def __init__(self) -> None:
        self.task: str | None = None
        self.started = 0.0
        self.failed = False
        self.errors: dict[str, str] = {}

    def feed(self, line: str) -> tuple[str, str, float] | None:
        """One output line. Returns ("start" | "done" | "failed", task, seconds) or None."""
        if begin := TASK_START.search(line):
            self.task, self.started, self.failed = begin.group(1), time.time(), False
            return "start", self.task, 0.0
        if (end := TASK_END.search(line)) and end.group(1) == self.task:
            self.task = None
            return ("failed" if self.failed else "done"), end.group(1), time.time() - self.started
        if self.task is None:
            return None
        if TASK_FAILED in line:
            self.failed = True
        elif (self.failed and (exception := EXCEPTION_LINE.match(line))
              and not exception.group(1).startswith("Airflow")):
            self.errors.setdefault(self.task, f"{exception.group(1)}: "
                                              f"{exception.group(2).strip()}"[:2000])
        return None


def run_dag(settings: Settings, *, conf: dict | None = None, logical_date: str | None = None,
            on_line: Callable[[str], None] | None = None) -> tuple[int, Path, float]:
    """``airflow dags test`` the nightly DAG. Returns (exit status, log file, seconds)."""
    env = airflow_env(settings)
    ensure_metadata_db(env)
    log_path = Path(env["AIRFLOW_HOME"]) / "last_run.log"
    args = ["dags", "test", DAG_ID]
    if logical_date:
        args.append(logical_date)
    if conf:
        args += ["-c", json.dumps(conf)]
    started = time.time()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(_airflow_command(*args), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            log_file.write(line)
            if on_line:
                on_line(line)
        status = process.wait()
    return status, log_path, time.time() - started


def last_run_summary(settings: Settings) -> dict | None:
    """The newest row of ``ops.pipeline_runs``."""
    from moviesforyou.foundation import warehouse

    conn = warehouse.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("select to_regclass('ops.pipeline_runs') is not null")
            if not cur.fetchone()[0]:
                return None
            cur.execute("""select run_id, state, source_status, trained, promoted, published,
                                  model_version, publish_id, tasks, metrics, note, errors
                           from ops.pipeline_runs where dag_id = %s
                           order by finished_at desc limit 1""", (DAG_ID,))
            row = cur.fetchone()
            if row is None:
                return None
            names = [d[0] for d in cur.description]
            return dict(zip(names, row, strict=True))
    finally:
        conn.close()
