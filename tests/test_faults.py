"""Faults, for real: the warehouse server crashes during an ingest and during a publish,
training is killed midway, the snapshot folder cannot be written, the API restarts
under load. Each test checks what survived (README, *Reliability*).

The crashes use a warehouse of their own (an embedded PostgreSQL in a temporary
folder, stopped with pg_ctl's ``immediate`` mode: no checkpoint, crash recovery at
the next start), never the session's server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from conftest import ROOT, query, wait_for_http
from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import WarehouseError
from moviesforyou.ingestion import ingest, sources, synth

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Fragile:
    """A warehouse server of the test module's own, to crash and restart."""

    settings: Settings
    server: embedded.EmbeddedPostgres

    def crash(self) -> None:
        assert self.server.stop(mode="immediate")

    def restart(self) -> None:
        assert self.server.start()
        warehouse.ensure(self.settings)

    def connect(self):
        return warehouse.connect(self.settings)

    def cli_env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MFY_", "AIRFLOW_CTX_", "MLFLOW_TRACKING_URI"))}
        env.update(self.settings.to_env(), **extra)
        return env

    def wait_for(self, statement: str, process=None, timeout: float = 120) -> None:
        """Poll until ``statement`` returns a row (while ``process``, if given, runs)."""
        deadline = time.time() + timeout
        with contextlib.closing(self.connect()) as conn:
            while not query(conn, statement):
                if process is not None and process.poll() is not None:
                    pytest.fail(f"the process ended first: {process.stdout.read()[-3000:]}")
                assert time.time() < deadline, f"timed out waiting for: {statement}"
                time.sleep(0.05)


@pytest.fixture(scope="module")
def fragile(embedded_settings):
    folder = Path(tempfile.mkdtemp(prefix="mfy-fragile-"))
    folder.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env.update(MFY_HOME=str(folder / "home"), MFY_WAREHOUSE_PORT=str(embedded.free_port(27432)),
               MFY_WRITER_WAIT="5")
    settings = Settings.from_env(env)
    warehouse.ensure(settings)
    server = warehouse.embedded(settings)
    # the URL explicitly, so that other homes (MLflow stores) can use this server
    settings = dataclasses.replace(settings, warehouse_url=server.url(settings.owner_role))
    yield Fragile(settings, server)
    server.stop(mode="immediate")
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def raw_state(conn, dataset: str) -> tuple:
    return query(conn, """select count(*), sum(rating), array_agg(distinct load_id)
                          from raw.ratings where dataset = %s""", (dataset,))[0]


def test_a_crash_during_an_ingest_leaves_the_previous_release_live(fragile, tmp_path):
    """`moviesforyou ingest` of a 1.5M-rating release; the server crashes while it COPYs."""
    dataset = "crash-test"
    small, big = tmp_path / "small", tmp_path / "big"
    synth.generate(small, synth.SynthSpec(n_ratings=20_000, seed=1), layout="csv")
    synth.generate(big, synth.SynthSpec(n_ratings=1_500_000, seed=2), layout="csv")
    with contextlib.closing(fragile.connect()) as conn:
        first = ingest.load_release(conn, sources.open_source(small, tmp_path), dataset)
        before = raw_state(conn, dataset)
    assert before[:1] == (20_000,)

    loading = subprocess.Popen(
        [sys.executable, "-m", "moviesforyou", "ingest", "--dataset", dataset, "--source",
         str(big), "--no-validate"], env=fragile.cli_env(), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fragile.wait_for("""select 1 from pg_stat_activity
                        where query ilike 'copy "raw_staging__crash_test".%%'""", loading)
    fragile.crash()
    said = " ".join(loading.communicate(timeout=120)[0].split())
    assert loading.returncode == 1
    assert "error: lost the warehouse connection: server closed the connection" in said, said

    fragile.restart()
    with contextlib.closing(fragile.connect()) as conn:
        # the previous release is live and whole; nothing of the new one is anywhere
        assert raw_state(conn, dataset) == before
        assert query(conn, "select nspname from pg_namespace where nspname like 'raw\\_%%'") \
            == []
        ledger = query(conn, "select load_id, status from ops.source_loads "
                             "where dataset = %s order by load_id", (dataset,))
        assert ledger == [(first.load_id, "loaded"), (first.load_id + 1, "staging")]
        # the next load (here: the same small release, unchanged) marks it failed
        again = ingest.load_release(conn, sources.open_source(small, tmp_path), dataset)
        assert again.status == "unchanged"
        assert query(conn, "select status, error from ops.source_loads where load_id = %s",
                     (first.load_id + 1,)) == [(
                         "failed", "interrupted: its process or the warehouse stopped while "
                                   "it was being written; nothing of it was kept")]
        assert raw_state(conn, dataset) == before


@pytest.fixture(scope="module")
def fragile_published(fragile, published, embedded_settings, tmp_path_factory):
    """The session's published ml-100k copied into the fragile server (pg_dump), with the
    session's MLflow store: a champion to publish, and live recommendations to keep."""
    session_server = warehouse.embedded(embedded_settings)
    source_db = published.warehouse_url.rsplit("/", 1)[1]
    dump = tmp_path_factory.mktemp("dump") / "published.sql"
    bin_dir = fragile.server.bin_dir
    subprocess.run([str(bin_dir / "pg_dump"), "-f", str(dump),
                    session_server.url(database=source_db)], check=True)
    admin = psycopg2.connect(fragile.server.url(database="postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"drop database if exists {embedded.DATABASE} with (force)")
        cur.execute(f"create database {embedded.DATABASE} owner {fragile.settings.owner_role}")
    admin.close()
    subprocess.run([str(bin_dir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump),
                    fragile.server.url()], check=True, stdout=subprocess.DEVNULL)
    settings = dataclasses.replace(fragile.settings, home=published.home)
    warehouse.ensure(settings)
    return settings


def live_recs(conn) -> tuple:
    return (query(conn, "select publish_id, model_version from recs.publication")[0],
            query(conn, "select count(*), sum(user_id::bigint * movie_id) "
                        "from recs.user_recommendations")[0])


def test_a_crash_during_a_publish_leaves_the_previous_recommendations_live(
        fragile, fragile_published, spark):
    from moviesforyou.orchestration import recs_publish

    settings = fragile_published
    with contextlib.closing(fragile.connect()) as conn:
        before = live_recs(conn)
        last = query(conn, "select coalesce(max(publish_id), 0) from ops.publish_log")[0][0]
    failures: list[BaseException] = []

    def run() -> None:
        try:
            recs_publish.publish(settings, spark=spark)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failures.append(exc)

    publishing = threading.Thread(target=run)
    publishing.start()
    fragile.wait_for(f"select 1 from ops.publish_log where status = 'building' "
                     f"and publish_id > {last}")
    fragile.crash()
    publishing.join(300)
    assert not publishing.is_alive()
    # the lost connection, as psycopg2 or as the warehouse's error for a new connection
    assert len(failures) == 1, failures
    assert isinstance(failures[0], psycopg2.Error | WarehouseError), failures

    fragile.restart()
    with contextlib.closing(fragile.connect()) as conn:
        assert live_recs(conn) == before  # live and whole
        assert query(conn, "select publish_id, status from ops.publish_log "
                           "where publish_id > %s", (last,)) == [(last + 1, "building")]
        crashed = last + 1
        assert query(conn, "select count(*) from recs.recommend(1, 10)")[0][0] == 10
    # it died in its first step, its lock gone with its session: the next publish marks
    # it failed at once, without waiting MFY_WRITER_WAIT for it, and goes live
    result = recs_publish.publish(settings, spark=spark)
    with contextlib.closing(fragile.connect()) as conn:
        status, error = query(conn, "select status, error from ops.publish_log "
                                    "where publish_id = %s", (crashed,))[0]
        assert status == "failed" and error.startswith("superseded: still building"), error
        assert live_recs(conn)[0] == (result.publish_id, result.model_version)
        assert live_recs(conn)[1][0] == before[1][0]


def immutable(folder: Path) -> contextlib.AbstractContextManager:
    """``folder`` read-only, even for root (chattr +i); skips where that is not allowed."""
    @contextlib.contextmanager
    def guard():
        folder.mkdir(parents=True, exist_ok=True)
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        locked = False
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
            if done.returncode:
                folder.chmod(mode)
                pytest.skip(f"root cannot make {folder} read-only here: {done.stderr.strip()}")
            locked = True
        try:
            yield folder
        finally:
            if locked:
                subprocess.run(["chattr", "-i", str(folder)], check=True)
            folder.chmod(mode)

    return guard()


def test_an_unwritable_snapshot_folder_fails_clearly(fragile, fragile_published, tmp_path):
    """The nightly's export_snapshot task (before training and publishing) with its kept
    snapshots' folder read-only: a SnapshotError naming the folder, nothing left behind."""
    from moviesforyou.orchestration import pipeline
    from spark_jobs.snapshot import SnapshotError

    home = tmp_path / "home"
    home.mkdir()
    settings = dataclasses.replace(fragile_published, home=home)
    with immutable(home / "snapshots"), pytest.raises(SnapshotError) as caught:
        pipeline.export_snapshot(settings)
    message = str(caught.value)
    assert message.startswith("cannot write the ratings snapshot: ")
    assert str(home / "snapshots") in message and "(MFY_HOME)" in message
    assert list(home.iterdir()) == [home / "snapshots"]  # no work folder left behind
    assert list((home / "snapshots").iterdir()) == []
    # writable again, the same task keeps the snapshot
    kept = pipeline.export_snapshot(settings)
    assert Path(kept["path"]).parent == home / "snapshots" and kept["rows"] == 99_693


def test_training_killed_midway_registers_nothing_and_the_next_run_closes_it(
        fragile, fragile_published, tmp_path):
    from spark_jobs import registry

    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    settings = dataclasses.replace(fragile_published, home=home)
    env = fragile.cli_env(MFY_HOME=str(home), MFY_WAREHOUSE_URL=settings.warehouse_url)
    command = [sys.executable, "-m", "moviesforyou", "train", "--quick"]
    training = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = registry.configure(settings)
    name = registry.model_name(settings)
    deadline = time.time() + 300

    def tuning_runs() -> list:
        experiment = client.get_experiment_by_name(registry.EXPERIMENT)
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id],
                                  "tags.mlflow.parentRunId LIKE '%'")

    while not tuning_runs():  # midway: the grid is being searched
        assert training.poll() is None, training.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    os.killpg(training.pid, signal.SIGKILL)  # the CLI, Spark's JVM and its Python workers
    training.wait(30)

    assert client.search_model_versions(f"name = '{name}'") == []  # nothing registered
    parent = client.get_run(tuning_runs()[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "RUNNING"  # killed: MLflow shows it unfinished

    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "1" and champion.tags["mfy.gate"] == "promoted"
    # the next training closed the killed one's run, and its nested runs, as FAILED
    closed = client.get_run(parent.info.run_id)
    assert closed.info.status == "FAILED"
    assert "ended while the run was RUNNING" in closed.data.tags["mfy.failure"]
    nested = {r.info.status for r in tuning_runs()
              if r.data.tags["mlflow.parentRunId"] == parent.info.run_id}
    assert nested and "RUNNING" not in nested, nested  # grid points done before stay done


def test_an_api_restart_under_load_fails_requests_only_while_it_restarts(published):
    port = embedded.free_port(18500)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MFY_API_DATABASE_URL": warehouse.reader_url(published),
           "MFY_DATASET": published.dataset}

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--timeout-graceful-shutdown", "10"],
            cwd=ROOT, env=env)
        wait_for_http(process, f"{base}/api/health", "the API", timeout=60)
        return process

    outcomes: list[tuple[float, object]] = []
    stop = threading.Event()

    def client(user: int) -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{base}/api/users/{user}/recommendations?k=10",
                                            timeout=10) as response:
                    answer = json.loads(response.read())
                    listed = len(answer["recommendations"])
                    outcomes.append((time.time(), (response.status, listed)))
            except urllib.error.HTTPError as error:
                outcomes.append((time.time(), (error.code, 0)))
            except OSError as error:  # refused or reset: the server is not there
                outcomes.append((time.time(), error))
                time.sleep(0.02)

    first = start()
    clients = [threading.Thread(target=client, args=(user,)) for user in (1, 2, 3, 4)]
    second = None
    try:
        for thread in clients:
            thread.start()
        time.sleep(2)
        went_down = time.time()
        first.send_signal(signal.SIGTERM)  # graceful: in-flight requests are answered
        first.wait(30)
        second = start()
        back_up = time.time()
        time.sleep(2)
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
        first.kill()
        if second is not None:
            second.terminate()
            second.wait(10)
    answered = [(t, o) for t, o in outcomes if isinstance(o, tuple)]
    errors = [(t, o) for t, o in outcomes if not isinstance(o, tuple)]
    # every answer was a whole list; no answer was a server error
    assert answered and {o for _, o in answered} == {(200, 10)}, set(o for _, o in answered)
    assert any(t < went_down for t, _ in answered) and any(t > back_up for t, _ in answered)
    # connection errors only between the stop and the new server's first answer
    assert all(went_down <= t <= back_up + 0.5 for t, _ in errors), [
        (t - went_down, repr(o)) for t, o in errors if not went_down <= t <= back_up + 0.5]
