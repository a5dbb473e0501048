"""The settings tree: one module reads the environment, and .env.example lists it all."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from moviesforyou.foundation.config import VARIABLES, ConfigError, Settings

#: Variables in .env.example that only docker compose reads (its services' passwords).
COMPOSE_ONLY = {"MFY_OWNER_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_USER",
                "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY"}


def test_env_example_lists_every_variable_and_no_other():
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*((?:MFY|MLFLOW)_[A-Z0-9_]+)=", text, flags=re.M))
    assert {v.name for v in VARIABLES} - listed == set()
    assert listed - {v.name for v in VARIABLES} - COMPOSE_ONLY == set()


def test_only_the_settings_module_reads_mfy_variables():
    read = re.compile(r"""(environ\.get\(|environ\[|getenv\()\s*["']MFY_""")
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for folder in ("src", "spark_jobs", "serving", "dags", "benchmarks", "scripts")
                 for path in (ROOT / folder).rglob("*.py")
                 if path.name != "config.py" or path.parent.name != "moviesforyou"
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if read.search(line)]
    assert offenders == []


def test_every_branch_of_the_tree_survives_a_child_environment(tmp_path):
    env = {"MFY_HOME": str(tmp_path), "MFY_RECS_N": "20", "MFY_SPARK_MASTER": "spark://h:7077",
           "MFY_SPARK_SHUFFLE_PARTITIONS": "8", "MFY_TUNE_DAY": "Never",
           "MFY_API_CACHE_SIZE": "0", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "MFY_MAX_RECS_AGE_HOURS": "12.5", "MFY_EXPECTATIONS_DIR": str(tmp_path / "x")}
    settings = Settings.from_env(env)
    assert (settings.publish.n, settings.spark.master, settings.spark.shuffle_partitions,
            settings.training.tune_day, settings.api.cache_size,
            settings.training.mlflow_tracking_uri, settings.max_recs_age_hours) == (
        20, "spark://h:7077", 8, "nev", 0, "http://mlflow:5000", 12.5)
    assert settings.suites_dir == tmp_path / "x"
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(("name", "value", "message"), [
    ("MFY_RECS_KEEP", "-1", "must be at least 0"),
    ("MFY_API_POOL_MAX", "many", "expected a whole number"),
    ("MFY_TUNE_DAY", "someday", "expected a weekday"),
    ("MFY_API_CACHE_TTL", "0", "must be positive"),
])
def test_a_bad_value_names_its_variable(name, value, message):
    with pytest.raises(ConfigError, match=rf"{name}='{value}': {message}"):
        Settings.from_env({name: value})
