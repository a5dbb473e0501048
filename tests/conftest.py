"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per test.

Nothing is mocked. The server is the same embedded warehouse the product runs,
in a temporary folder and on its own port, so it never touches a developer's
``.mfy``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

import fixture_releases
from moviesforyou import warehouse
from moviesforyou.config import Settings

ROOT = Path(__file__).resolve().parents[1]
#: The hand-written mini releases of fixture_releases.py, written out once per session.
FIXTURES = fixture_releases.write(Path(tempfile.mkdtemp(prefix="mfy-fixtures-")))
ML100K = (ROOT.parent / "shared" / "data" / "ml-100k").resolve()


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens 100K release, read in place (never copied into the repo)."""
    if not (ML100K / "u.data").exists():
        pytest.fail(f"the real ml-100k is expected at {ML100K} (see DEVELOPERS.md)")
    return ML100K


@pytest.fixture(scope="session")
def state_dir():
    # not pytest's tmp_path: its 0700 parents would stop the server's OS user (when root)
    path = Path(tempfile.mkdtemp(prefix="mfy-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_settings(state_dir: Path) -> Settings:
    """Settings for an embedded warehouse in a session-wide temporary folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env["MFY_HOME"] = str(state_dir / "home")
    env["MFY_WAREHOUSE_PORT"] = str(warehouse._free_port(55432))
    settings = Settings.from_env(env)
    warehouse.ensure(settings)
    yield settings
    warehouse.embedded(settings).stop()


@pytest.fixture
def superuser_dsn(embedded_settings: Settings) -> str:
    return warehouse.embedded(embedded_settings).url(database="postgres")


@contextlib.contextmanager
def fresh_database(embedded_settings: Settings):
    """A new bootstrapped database on the session's server, dropped afterwards.

    Its settings point at it through ``MFY_WAREHOUSE_URL``, as a real server would be.
    """
    server = warehouse.embedded(embedded_settings)
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server.url(database="postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("create database {} owner {}").format(
            sql.Identifier(name), sql.Identifier(embedded_settings.owner_role)))
    settings = dataclasses.replace(
        embedded_settings, warehouse_url=server.url(embedded_settings.owner_role, name)
    )
    try:
        warehouse.ensure(settings)
        yield settings
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture
def db_settings(embedded_settings: Settings) -> Settings:
    """A fresh database for one test."""
    with fresh_database(embedded_settings) as settings:
        yield settings


@pytest.fixture
def conn(db_settings: Settings):
    connection = warehouse.connect(db_settings)
    yield connection
    connection.close()


def query(connection, statement: str, params=()) -> list[tuple]:
    """Run a query in its own transaction and return all rows."""
    with connection, connection.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


@pytest.fixture(scope="session")
def spark(state_dir: Path):
    """One local SparkSession for the whole test session."""
    os.environ.setdefault("MFY_SPARK_DRIVER_MEMORY", "2g")
    os.environ.setdefault("MFY_SPARK_SHUFFLE_PARTITIONS", "4")
    from spark_jobs.session import get_spark

    session = get_spark(state_dir / "spark-home", app_name="moviesforyou-tests")
    yield session
    session.stop()
