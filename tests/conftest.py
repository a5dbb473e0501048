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
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

import fixture_releases
from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: a throw-away home, this
# project's DAGs, no examples. `airflow_db` creates the metadata database.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mfy-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
})
#: The hand-written mini releases of fixture_releases.py, written out once per session.
FIXTURES = fixture_releases.write(Path(tempfile.mkdtemp(prefix="mfy-fixtures-")))
ML100K = (ROOT.parent / "shared" / "data" / "ml-100k").resolve()


def pytest_addoption(parser):
    parser.addoption("--screenshots", action="store_true",
                     help="write the page and dashboard screenshots into docs/screenshots "
                          "(`make screenshots`); otherwise into a temporary folder")


@pytest.fixture(scope="session")
def screenshots(request, tmp_path_factory) -> Path:
    """Where page tests save what they saw: docs/screenshots only when asked."""
    if request.config.getoption("--screenshots"):
        folder = ROOT / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens 100K release, read in place (never copied into the repo)."""
    if not (ML100K / "u.data").exists():
        pytest.fail(f"the real ml-100k is expected at {ML100K}: it is read in place, as its "
                    "licence forbids copying it into the repository (README, *Tests*)")
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
    # below Linux's ephemeral range (32768-60999): no outgoing connection can take it
    env["MFY_WAREHOUSE_PORT"] = str(embedded.free_port(25432))
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


def execute(connection, statement: str, params=()) -> None:
    """Run a statement that returns no rows in its own transaction."""
    with connection, connection.cursor() as cur:
        cur.execute(statement, params)


@pytest.fixture(scope="session")
def spark(state_dir: Path):
    """One local SparkSession for the whole test session."""
    from spark_jobs.session import get_spark

    # small defaults for the tests, unless the environment says otherwise
    settings = Settings.from_env({"MFY_SPARK_DRIVER_MEMORY": "2g",
                                  "MFY_SPARK_SHUFFLE_PARTITIONS": "4", **os.environ})
    session = get_spark(state_dir / "spark-home", app_name="moviesforyou-tests",
                        spark=settings.spark)
    yield session
    session.stop()


@contextlib.contextmanager
def modelled_warehouse(embedded_settings: Settings, release: Path, home: Path):
    """A fresh database with an ml-100k-layout ``release`` ingested and dbt-built."""
    from moviesforyou.ingestion import ingest, sources
    from moviesforyou.transformation import transform

    with fresh_database(embedded_settings) as settings:
        settings = dataclasses.replace(settings, home=home)
        connection = warehouse.connect(settings)
        try:
            ingest.load_release(connection, sources.open_source(release, home), "ml-100k")
        finally:
            connection.close()
        transform.transform(settings, docs=False)
        yield settings


#: A fixed, quick ALS configuration for tests that need a trained model, not a tuned one
#: (ALS only: tests/test_families.py trains the NumPy families).
QUICK_MODELS = dict(
    explicit=None, implicit=None, holdout_per_user=5,
    explicit_grid={"rank": [10], "reg_param": [0.1], "max_iter": [5]},
    implicit_grid={"rank": [20], "reg_param": [0.1], "alpha": [4.0], "max_iter": [8]},
    bpmf_grid={}, ease_grid={},
)


#: A DAG run's conf for a quick training (the grids of QUICK_MODELS).
QUICK_TRAIN = {key: QUICK_MODELS[key] for key in (
    "holdout_per_user", "explicit_grid", "implicit_grid", "bpmf_grid", "ease_grid")}


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    """The project's DAGs, parsed once per test module."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="session")
def published(embedded_settings: Settings, ml100k: Path, spark, state_dir: Path):
    """The real ml-100k ingested, modelled, trained and published, once per session.

    Tests may publish again or roll back, but must leave a live version behind.
    """
    from moviesforyou.orchestration import recs_publish, training
    from spark_jobs.config import TrainConfig

    with modelled_warehouse(embedded_settings, ml100k, state_dir / "published-home") as settings:
        training.train_and_gate(settings, TrainConfig(**QUICK_MODELS), spark=spark)
        recs_publish.publish(settings, spark=spark)
        yield settings


def wait_for_http(process, url: str, what: str, timeout: float) -> None:
    """Wait until ``url`` answers; fail the test if ``process`` dies or time runs out."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"{what} did not start ({url})")
            time.sleep(0.3)


def call(base: str, path: str, body: dict | None = None, *, token: str | None = None,
         method: str | None = None) -> tuple[int, dict]:
    """One JSON request to the API: (status, answer), errors included; ``token`` goes
    in ``Authorization: Bearer``. The answer of a 204 is {}."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def running_api(settings: Settings, dataset: str | None = None):
    """The API as its own process (uvicorn), reading ``settings``' warehouse as the reader.

    Yields its base URL. ``dataset`` is its ``MFY_DATASET`` (the release served
    before anything is published; afterwards it follows the live publish).
    """
    import subprocess
    import sys

    port = embedded.free_port(18000)
    env = {**os.environ, "MFY_API_DATABASE_URL": warehouse.reader_url(settings),
           "MFY_DATASET": dataset or settings.dataset,
           "MFY_API_WRITE_LIMIT": str(settings.api.write_limit)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(process, f"{base}/openapi.json", "the API", timeout=60)
        yield base
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def api_server(published: Settings):
    """The API on the session's published ml-100k."""
    with running_api(published) as base:
        yield base


@pytest.fixture
def wh(published: Settings):
    """A connection to the session's published ml-100k (a module on a warehouse of its own
    defines its own ``wh``)."""
    connection = warehouse.connect(published)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database (SQLite) in the session's AIRFLOW_HOME."""
    import subprocess
    import sys

    done = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                          capture_output=True, text=True, env=os.environ)
    if done.returncode:
        pytest.fail(f"airflow db migrate failed: {done.stderr[-2000:]}")
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's) through its chromedriver, one per test session."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(driver, css: str, text: str | None = None, timeout: float = 15):
    """The element at ``css`` once it is visible (or shows ``text``); fails with the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    try:
        if text is None:
            return wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        logs = driver.get_log("browser")
        raise AssertionError(f"{css} {text!r} not shown in {timeout} s at {driver.current_url}."
                             f"\nPage:\n{page[:1500]}\nConsole: {logs}") from None
    return driver.find_element(By.CSS_SELECTOR, css)


@dataclasses.dataclass
class SparkCluster:
    master: str  #: spark://127.0.0.1:PORT
    python: Path  #: the executors' Python: the locked dependencies, not the project
    work: Path  #: the worker's folder (executor logs, shipped files)


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster on 127.0.0.1: a master and a worker, each its own JVM,
    started from the installed Spark distribution (the pyspark wheel's ``spark-class``).

    Its executors run Python in a separate environment that has the locked dependencies
    but not this project (no editable install, not started in the checkout), so a
    job's code reaches them only if it is shipped with the job.
    """
    import json
    import subprocess
    import sys
    import sysconfig
    import urllib.request

    import pyspark

    folder = tmp_path_factory.mktemp("spark-cluster")
    executors = folder / "executor-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(executors)], check=True)
    python = executors / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    # a plain path: the locked packages, without running their .pth files (the editable
    # install of this project is one of those)
    Path(site, "locked-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    spark_home = Path(pyspark.__file__).parent
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_HOME")}
    env |= {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(folder), "PYSPARK_PYTHON": str(python)}
    port, ui = embedded.free_port(57077), embedded.free_port(58080)
    spark_class = str(spark_home / "bin" / "spark-class")
    logs = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        return subprocess.Popen([spark_class, *args], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    processes = [start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                       "--port", str(port), "--webui-port", str(ui))]
    wait_for_http(processes[0], f"http://127.0.0.1:{ui}/json/", "the Spark master", 60)
    processes.append(start("worker", "org.apache.spark.deploy.worker.Worker",
                           f"spark://127.0.0.1:{port}", "--host", "127.0.0.1", "--cores", "2",
                           "--memory", "3g", "--work-dir", str(folder / "work"),
                           "--webui-port", "0"))
    deadline = time.time() + 60
    while json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/"))["aliveworkers"] < 1:
        if time.time() > deadline or processes[1].poll() is not None:
            log = (folder / "worker.log").read_text()[-2000:]
            pytest.fail(f"the Spark worker did not register: {log}")
        time.sleep(0.5)
    yield SparkCluster(f"spark://127.0.0.1:{port}", python, folder / "work")
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    for log in logs:
        log.close()


@contextlib.contextmanager
def temporary_environment(values: dict[str, str]):
    """Set environment variables for the duration of a block, then restore them (a test
    standing in for a deployment's environment; the product never writes its own)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
