"""Style gates: sqlfluff on the dbt models (postgres dialect), ruff on the Python."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_dbt_models_pass_sqlfluff():
    result = subprocess.run(
        [sys.executable, "-m", "sqlfluff", "lint", "dbt_project/models", "--processes", "1",
         "--disable-progress-bar"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_python_passes_ruff():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks", "dags",
         "spark_jobs", "serving"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:]
