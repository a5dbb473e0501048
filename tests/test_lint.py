"""Style and structure gates: sqlfluff on the dbt models (postgres dialect), ruff on the
Python, hadolint on the Dockerfiles (its rules and the one ignored, with why:
.hadolint.yaml), the import-linter layers contract (pyproject.toml), and file sizes."""

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
         "spark_jobs", "serving", "tools", "dashboards", "scripts"],
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


# --------------------------------------------------------------------------- structure

#: Where the product's Python is, and the longest file each may hold.
PRODUCT = ("src", "spark_jobs", "serving", "dags", "tools")
LIMITS = {"product": 400, "tests": 600}


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_imports_keep_the_layers_contract():
    """orchestration -> stages -> foundation, stages independent, no cycles
    ([tool.importlinter] in pyproject.toml); function-level imports count."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout, result.stdout[-2000:]


def test_every_package_of_moviesforyou_is_in_a_layer():
    """A new subpackage (or a module at the package's top) would be outside the
    contract, free to import anything: each must be named as a layer."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = {name.strip() for contract in config["contracts"] if contract["type"] == "layers"
               for layer in contract["layers"] for name in layer.split("|")}
    package = ROOT / "src" / "moviesforyou"
    found = {f"moviesforyou.{p.name}" for p in package.iterdir()
             if p.is_dir() and (p / "__init__.py").exists()}
    # foldin.py: the import path of models registered before the layers (test_training)
    modules = {p.name for p in package.glob("*.py")} - {"__init__.py", "__main__.py",
                                                       "foldin.py"}
    assert found <= layered, found - layered
    assert not modules, f"modules outside every layer: {sorted(modules)}"


def test_the_contract_catches_a_function_level_import_up_the_layers(tmp_path):
    """The same contract on a copy of the code in which the foundation imports the
    orchestration inside a function: lint-imports fails and names the import."""
    import shutil

    for folder in ("src/moviesforyou", "spark_jobs", "serving"):
        shutil.copytree(ROOT / folder, tmp_path / Path(folder).name,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "moviesforyou" / "foundation" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _up():\n"
                      "    from moviesforyou.orchestration import pipeline  # noqa: F401\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0, result.stdout[-2000:]
    assert "moviesforyou.foundation.errors -> moviesforyou.orchestration.pipeline" in \
        result.stdout, result.stdout[-3000:]


def _python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")
            if "__pycache__" not in p.parts]


def test_no_file_outgrows_its_limit():
    """No product file over 400 lines, no test file over 600: a file that grows is
    split along what it does."""
    over = [f"{p.relative_to(ROOT)}: {n} lines (limit {LIMITS[kind]})"
            for kind, folders in (("product", PRODUCT), ("tests", ("tests",)))
            for p in _python_files(*folders)
            if (n := len(p.read_text().splitlines())) > LIMITS[kind]]
    assert not over, "\n".join(over)


# --------------------------------------------------------------------------- docs


def test_the_docs_site_builds_strictly():
    """``mkdocs build --strict``: a broken link or a page missing from the nav fails."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
         str(ROOT / ".mfy" / "site-test")], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_generated_reference_pages_are_current():
    """docs/reference/configuration.md and sql.md are what scripts/docs_reference.py
    makes from the settings tree and the recs schema's own comments."""
    result = subprocess.run([sys.executable, "scripts/docs_reference.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    from moviesforyou.foundation.config import VARIABLES

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    assert all(f"`{v.name}`" in page for v in VARIABLES)


def test_the_readme_is_a_front_door():
    """At most 250 lines, the two commands, and every docs link it has resolves."""
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make run" in readme and "make test" in readme
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", readme)
    assert links and all((ROOT / link).exists() for link in links), links
