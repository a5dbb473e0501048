"""Style gates: sqlfluff on the dbt models (postgres dialect), ruff on the Python,
hadolint on the Dockerfiles (its rules and the one ignored, with why: .hadolint.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docker").rglob("Dockerfile"))
    assert len(dockerfiles) == 2, dockerfiles
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), "--no-color", *dockerfiles],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
