"""The server deployment, run natively from docker-compose.yml (tools/stack/).

The compose file's own commands and environment run on this machine against one
real PostgreSQL with the databases and roles of docker/postgres/init-databases.sh,
passwords required: airflow-init, the Airflow api-server, scheduler,
dag-processor and triggerer on a Postgres metadata database, the MLflow server on
its Postgres store, and the API as the read-only role. The scheduler then runs
the nightly DAG's scheduled run on its own, end to end, and a backfilled past night
beside it; the scheduler is killed (SIGKILL, with its task runners) in the middle of
a publish build, and the one started after it finishes the runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
import yaml
from cryptography.fernet import Fernet

import stack  # tools/stack/, on the tests' path (pyproject: pythonpath)
from conftest import QUICK_TRAIN, ROOT
from moviesforyou.foundation import names
from moviesforyou.foundation.config import Settings

# --------------------------------------------------------------------------- compose rules


@pytest.mark.parametrize(("text", "expected"), [
    ("${SET}", "yes"), ("$SET/x", "yes/x"), ("$$SET", "$SET"), ("${UNSET:-d}", "d"),
    ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${SET:+alt}", "alt"), ("${UNSET+alt}", ""),
    ("a ${SET} b ${UNSET}", "a yes b "),
])
def test_interpolation_follows_compose(text, expected):
    assert stack.interpolate(text, {"SET": "yes", "EMPTY": ""}) == expected


def test_a_required_variable_is_named():
    with pytest.raises(stack.StackError, match="AIRFLOW_FERNET_KEY is required: set it"):
        stack.interpolate("${AIRFLOW_FERNET_KEY:?set it}", {})


def test_every_variable_the_compose_file_uses_is_in_env_example():
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    listed = set(stack.read_env_file(ROOT / ".env.example"))
    commented = set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(),
                               flags=re.M))
    assert used - listed - commented == set()


def write_env(path, **extra) -> None:
    """.env.example with every CHANGE_ME filled in, plus ``extra``."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if value == "CHANGE_ME":
            # every secret begins with "-" on purpose: token_urlsafe gives one that does
            # now and then, and the CLIs that take them must not read it as an option
            secret = Fernet.generate_key().decode() if key == "AIRFLOW_FERNET_KEY" \
                else "-" + secrets.token_urlsafe(48)
            line = f"{key}={secret}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")


def test_the_plan_maps_hosts_ports_and_volumes(tmp_path):
    write_env(tmp_path / ".env")
    planned = stack.LocalStack(tmp_path / "state", tmp_path / ".env")
    assert set(planned.services) == {"airflow-init", "airflow-apiserver", "airflow-scheduler",
                                     "airflow-dag-processor", "airflow-triggerer", "mlflow",
                                     "api", "superset"}
    assert planned.skipped() == ["metabase", "metabase-provision"]
    scheduler = planned.services["airflow-scheduler"].env
    port = planned.plan.local_port("warehouse", 5432)
    assert re.fullmatch(rf"postgresql\+psycopg2://airflow:[^@]+@127\.0\.0\.1:{port}/airflow",
                        scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    api_port = planned.plan.local_port("airflow-apiserver", 8080)
    assert scheduler["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
        f"http://127.0.0.1:{api_port}/execution/"
    assert scheduler["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert scheduler["AIRFLOW_HOME"] == str(tmp_path / "state" / "volumes" / "airflow-home")
    assert scheduler["PATH"].startswith(str(ROOT / ".venv" / "bin") + ":")
    mlflow = planned.services["mlflow"].command
    assert mlflow[:2] == ["mlflow", "server"]
    artifacts = tmp_path / "state" / "volumes" / "mlflow-artifacts"
    assert f"--artifacts-destination={artifacts}" in mlflow
    # basic auth: its config from the repository, its user store in its own volume
    assert "--app-name=basic-auth" in mlflow
    assert planned.services["mlflow"].env["MLFLOW_AUTH_CONFIG_PATH"] == \
        str(ROOT / "docker" / "mlflow" / "basic_auth.ini")
    assert planned.services["mlflow"].cwd == tmp_path / "state" / "volumes" / "mlflow-auth"
    assert scheduler["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".FabAuthManager")
    # Superset: its own image's start script and base-image environment, from .venv-superset
    superset = planned.services["superset"]
    image = tmp_path / "state" / "images" / "superset" / "app"
    assert superset.command == [str(image / "docker" / "mfy-start.sh"), "--bind",
                                f"127.0.0.1:{planned.plan.local_port('superset', 8088)}"]
    assert superset.env["PYTHONPATH"] == str(image / "pythonpath")
    assert superset.env["SUPERSET_HOME"] == str(tmp_path / "state" / "volumes" / "superset-home")
    assert superset.env["PATH"].startswith(str(ROOT / ".venv-superset" / "bin") + ":")
    assert re.fullmatch(rf"postgresql\+psycopg2://superset:[^@]+@127\.0\.0\.1:{port}/superset",
                        superset.env["SUPERSET_DATABASE_URI"])
    assert (image / "mfy-dashboards" / "superset_bundle.py",
            ROOT / "dashboards" / "superset_bundle.py") in superset.copies
    assert planned.services["api"].command[-4:] == [
        "--port", str(planned.plan.local_port("api", 8000)), "--workers", "2"]


# --------------------------------------------------------------------------- the real stack


#: The past night the backfill runs, beside the scheduler's own nightly.
BACKFILL_NIGHT = "2026-11-01T02:30:00+00:00"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A small synthetic release in the 100K layout (20,000 ratings): two whole nightlies
    share the two cores here, and the real ml-100k runs end to end in other tests."""
    import fixture_releases

    return fixture_releases.synthetic_release(tmp_path_factory.mktemp("stack-release"),
                                              "ml-100k", ratings=20_000, seed=8, users=300,
                                              movies=600, as_zip=False)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory, release):
    """The stack up, its scheduler starting the scheduled nightly on its own, and a
    backfill of one past night asked for at once through the REST API, so that two
    runs of the DAG go at the same time (a backfill has its own max_active_runs)."""
    folder = tmp_path_factory.mktemp("stack")
    folder.chmod(0o755)  # the embedded server's OS user walks into it when we are root
    # a killed task runner is noticed after 45 s without heartbeats, a dead scheduler's
    # tasks within 30 s, and a failed try is retried 5 s on
    write_env(folder / ".env", MFY_SOURCE=str(release), MFY_TRAIN_CONF=json.dumps(QUICK_TRAIN),
              AIRFLOW_VIEWER_PASSWORD="-" + secrets.token_urlsafe(24),
              AIRFLOW_TASK_HEARTBEAT_TIMEOUT="45", AIRFLOW_ORPHAN_CHECK_SECONDS="30",
              AIRFLOW_RETRY_DELAY="5")
    running = stack.LocalStack(folder / "state", folder / ".env")
    with running:
        token = running.airflow_token()
        deadline = time.time() + 300
        while True:  # the dag-processor parses the DAG file after the services are up
            try:
                running.airflow("/dags/movielens_nightly", token)
                break
            except stack.StackError:
                assert time.time() < deadline, running.log_tail("airflow-dag-processor")
                time.sleep(2)
        running.airflow("/backfills", token, {
            "dag_id": "movielens_nightly", "from_date": BACKFILL_NIGHT,
            "to_date": BACKFILL_NIGHT.replace("T02:30", "T03:30"), "max_active_runs": 1,
            "dag_run_conf": {"train": QUICK_TRAIN}})
        yield running


def owner_url(local_stack) -> str:
    port = local_stack.plan.local_port("warehouse", 5432)
    return (f"postgresql://mfy_owner:{local_stack.env_values['MFY_OWNER_PASSWORD']}"
            f"@127.0.0.1:{port}/moviesforyou")


#: The writer lock granted (``warehouse.writer_lock``: a session advisory lock).
WRITER_HELD = """exists (select 1 from pg_locks where locktype = 'advisory' and granted
                         and objid = hashtext('moviesforyou.writer')::oid)"""


def ingest_during_a_dbt_build(local_stack, release: Path, home: Path,
                              timeout: float = 600) -> subprocess.CompletedProcess:
    """Once an Airflow task's dbt build holds the warehouse's writer lock, a CLI ingest
    that does not wait (MFY_WRITER_WAIT=0): what it said.

    The CLI is started first and told to go on (a line on its standard input) when the
    lock is seen held: a dbt build of this small release lasts seconds, and a CLI started
    only then, spending them on its imports, once came too late and found the release
    unchanged."""
    held = f"""select 1 from ops.writer where holder like 'Airflow %%(dbt build)'
               and {WRITER_HELD}"""
    # this process's MLflow store and settings are not the CLI's
    env = {k: v for k, v in os.environ.items()
           if k != "MLFLOW_TRACKING_URI" and not k.startswith(("MFY_", "AIRFLOW"))}
    env.update(MFY_HOME=str(home), MFY_WAREHOUSE_URL=owner_url(local_stack), MFY_WRITER_WAIT="0")
    cli = subprocess.Popen(
        [sys.executable, "-c", "import sys\n"
         "from moviesforyou.foundation import warehouse  # noqa\n"
         "from moviesforyou.ingestion import formats, ingest, sources  # noqa\n"
         "from moviesforyou.orchestration import cli\n"
         "sys.stdin.readline()\n"
         "sys.argv[0] = 'moviesforyou'\n"
         "cli.main()\n",
         "ingest", "--dataset", "ml-100k", "--source", str(release)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.time() + timeout
    try:
        with contextlib.closing(psycopg2.connect(owner_url(local_stack))) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                while True:
                    cur.execute("select to_regclass('ops.writer')")
                    if cur.fetchone()[0] is not None:
                        cur.execute(held)
                        if cur.fetchall():
                            break
                    assert time.time() < deadline, local_stack.log_tail("airflow-scheduler")
                    time.sleep(0.2)
        stdout, stderr = cli.communicate("go\n", timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    return subprocess.CompletedProcess(cli.args, cli.returncode, stdout, stderr)


def kill_the_scheduler_during_a_publish_build(local_stack, timeout: float = 900) -> dict:
    """SIGKILL the scheduler with everything it started (its executor, the task runners
    and their tasks) while a run's ``score_recs`` builds a publish under the writer lock,
    then start a scheduler again. What was killed: the run, the publish and the task's pid."""
    building = f"""select w.holder, w.pid, p.publish_id from ops.writer as w
                   join ops.publish_log as p on p.status = 'building'
                       and p.action = 'publish' and p.row_counts = '{{}}'::jsonb
                   where w.holder like 'Airflow %% task score_recs (publish)'
                       and {WRITER_HELD}"""
    deadline = time.time() + timeout
    with contextlib.closing(psycopg2.connect(owner_url(local_stack))) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            while True:
                cur.execute(building)
                found = cur.fetchone()
                if found:
                    break
                assert time.time() < deadline, local_stack.log_tail("airflow-scheduler")
                time.sleep(0.2)
            holder, pid, publish_id = found
            killed = local_stack.kill("airflow-scheduler")
            assert pid in killed, (pid, killed)  # the task itself, not only the scheduler
            # its session died with it, and Postgres let the lock go
            lock_deadline = time.time() + 60
            while True:
                cur.execute(f"select {WRITER_HELD}")
                if not cur.fetchone()[0]:
                    break
                assert time.time() < lock_deadline, "the writer lock outlived its task"
                time.sleep(0.5)
    local_stack.restart("airflow-scheduler")
    run_id = re.search(r" run (\S+) task ", holder).group(1)
    return {"run_id": run_id, "publish_id": publish_id, "pid": pid}


def test_the_compose_services_run_a_scheduled_nightly_and_a_backfill_at_once(
        local_stack, release, tmp_path, monkeypatch):
    """The scheduler runs the scheduled nightly and a backfilled past night at the same
    time, on one warehouse. Every writing step takes the warehouse's writer lock, so
    the two write one after the other and both succeed; the second goes on with the
    release the first staged. A CLI ingest during a run's dbt build is refused with the
    holder's name. Training logs to the MLflow server over HTTP, its registry lives in
    Postgres, and the API serves the publish as mfy_reader."""
    refused = ingest_during_a_dbt_build(local_stack, release, tmp_path / "cli-home")
    killed = kill_the_scheduler_during_a_publish_build(local_stack)
    scheduled = local_stack.wait_for_dag_run("movielens_nightly", timeout=1800)
    backfilled = local_stack.wait_for_dag_run("movielens_nightly", run_type="backfill",
                                              timeout=1800)
    for run in (scheduled, backfilled):
        assert run["state"] == "success", (run, local_stack.log_tail("airflow-scheduler"))
    assert backfilled["logical_date"].startswith("2026-11-01T02:30"), backfilled
    # at once, not one after the other
    runs = (scheduled, backfilled)
    assert max(r["start_date"] for r in runs) < min(r["end_date"] for r in runs), runs
    # the CLI writer was told who holds the warehouse, and wrote nothing
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 1, said
    assert re.search(r"ingest: the warehouse is being written by Airflow movielens_nightly "
                     r"run (scheduled|backfill)__\S+ task build_marts \(dbt build\) on \S+, "
                     r"pid \d+, since ", said), said

    # the new scheduler found the killed task without heartbeats (Airflow's own
    # detection), failed that try and retried it; the retry closed the dead build
    # at once and published
    token = local_stack.airflow_token()
    task = local_stack.airflow(f"/dags/movielens_nightly/dagRuns/{killed['run_id']}"
                               "/taskInstances/score_recs", token)
    assert task["state"] == "success" and task["try_number"] >= 2, task

    env = local_stack.env_values
    warehouse_port = local_stack.plan.local_port("warehouse", 5432)
    with contextlib.closing(psycopg2.connect(owner_url(local_stack))) as conn, \
            conn.cursor() as cur:
        cur.execute("select status, error from ops.publish_log where publish_id = %s",
                    (killed["publish_id"],))
        status, error = cur.fetchone()
        assert status == "failed" and error.startswith("superseded: still building"), error
        cur.execute("select count(*) from ops.publish_log where status = 'building'")
        assert cur.fetchone() == (0,)
        cur.execute(f"select {WRITER_HELD}")
        assert cur.fetchone() == (False,)
        cur.execute("""select run_id, source_status, trained, published
                       from ops.pipeline_runs where dag_id = 'movielens_nightly'""")
        rows = {run_id: rest for run_id, *rest in cur.fetchall()}
        cur.execute("select status from ops.source_loads")
        loads = [status for (status,) in cur.fetchall()]
        cur.execute(r"select nspname from pg_namespace where nspname like 'raw\_%%'")
        staging = cur.fetchall()
        cur.execute("select count(*), count(distinct load_id) from raw.ratings")
        ratings = cur.fetchone()
        cur.execute("select model_version from recs.publication")
        (live_version,) = cur.fetchone()
    # one release load, staged once and attached once; nothing left aside. The other run
    # either went on with the release the first staged (loaded) or, once the first had
    # attached it, found nothing new (unchanged): which, the lock's order decides
    assert loads.count("loaded") == 1 and set(loads) <= {"loaded", "unchanged"}, loads
    assert staging == [] and ratings == (20_000, 1), (staging, ratings)
    statuses = [rows[run["dag_run_id"]] for run in runs]
    assert {status for status, *_ in statuses} <= {"loaded", "unchanged"}, rows
    assert ["loaded", True, True] in statuses, rows  # it trained on the release and published

    # training logged to the MLflow server over HTTP; its registry lives in Postgres
    from mlflow import MlflowClient

    # signed in as the pipeline is; both URIs: an earlier test in this process may have
    # set MLflow's global registry
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_ADMIN_USER"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_ADMIN_PASSWORD"])
    client = MlflowClient(tracking_uri=local_stack.url("mlflow"),
                          registry_uri=local_stack.url("mlflow"))
    name = Settings.from_env({}).training.model_name
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == str(live_version)
    run_info = client.get_run(champion.run_id)
    assert run_info.data.metrics  # the training's figures, sent over HTTP
    with contextlib.closing(psycopg2.connect(
            host="127.0.0.1", port=warehouse_port, dbname="mlflow", user="mlflow",
            password=env["MLFLOW_DB_PASSWORD"])) as conn, conn.cursor() as cur:
        cur.execute("select version from model_versions where name = %s", (name,))
        assert str(champion.version) in {str(v) for (v,) in cur.fetchall()}

    # the API serves the publish, reading as mfy_reader
    url = local_stack.url("api", "/api/users/1/recommendations?k=5")
    with urllib.request.urlopen(url, timeout=30) as response:
        answer = json.load(response)
    assert len(answer["recommendations"]) == 5
    assert answer["model_version"] == str(champion.version)
    with contextlib.closing(psycopg2.connect(
            host="127.0.0.1", port=warehouse_port, dbname="moviesforyou", user="postgres",
            password=env["POSTGRES_PASSWORD"])) as conn, conn.cursor() as cur:
        cur.execute("select distinct usename from pg_stat_activity "
                    "where application_name = 'moviesforyou-api'")
        assert cur.fetchall() == [("mfy_reader",)]


def test_the_warehouse_asks_for_passwords(local_stack):
    port = local_stack.plan.local_port("warehouse", 5432)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=port, dbname="moviesforyou",
                         user="mfy_reader", password="wrong")


def test_airflow_refuses_a_wrong_password(local_stack):
    request = urllib.request.Request(
        local_stack.url("airflow-apiserver", "/auth/token"),
        json.dumps({"username": "admin", "password": "wrong"}).encode(),
        {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code in (401, 403)


def test_superset_in_the_stack_charts_what_the_nightly_published(local_stack):
    """The compose file's Superset (its image's start script, from .venv-superset) imported
    the dashboards against the stack's warehouse as mfy_reader when it started; after
    the nightly and the freshness DAG it triggers, every chart's query runs there and
    returns rows, and its web server signs in the .env admin and lists the three
    dashboards."""
    sys.path.insert(0, str(ROOT / "dashboards"))
    import superset_bundle

    # the publish's asset event starts the freshness DAG, which measures the published
    # lists into ops.recs_quality (the coverage chart's rows)
    followed = local_stack.wait_for_dag_run(names.FRESHNESS_DAG, run_type="asset_triggered",
                                            timeout=900)
    assert followed["state"] == "success", (followed, local_stack.log_tail("airflow-scheduler"))
    # a viewer shown a list (the API logs it), then the freshness DAG asked for by hand:
    # it builds the online measures of what was shown so far (the online chart's rows)
    with urllib.request.urlopen(local_stack.url("api", "/api/users/2/recommendations?k=5"),
                                timeout=30) as response:
        assert response.status == 200
    time.sleep(3)  # the API writes its exposure log every second
    local_stack.airflow(f"/dags/{names.FRESHNESS_DAG}/dagRuns", local_stack.airflow_token(),
                        {"logical_date": None})
    measured = local_stack.wait_for_dag_run(names.FRESHNESS_DAG, run_type="manual", timeout=900)
    assert measured["state"] == "success", (measured, local_stack.log_tail("airflow-scheduler"))
    env = local_stack.env_values
    service = local_stack.services["superset"]
    done = subprocess.run(
        [str(ROOT / ".venv-superset" / "bin" / "python"),
         str(ROOT / "dashboards" / "superset_bundle.py"), "check",
         "--username", env["SUPERSET_ADMIN_USER"]],
        env=service.env, cwd=service.cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = re.findall(r"^\s*(\S+)\s+(\d+) rows\s+(.+)$", done.stdout, flags=re.M)
    charts = {yaml.safe_load(p.read_text())["slice_name"]
              for p in (ROOT / "dashboards" / "superset" / "charts").glob("*.yaml")}
    assert {name for _, _, name in results} == charts
    assert all(status == "ok" for status, _, _ in results), results
    assert all(int(rows) > 0 for _, rows, _ in results), results
    client = superset_bundle.Client(local_stack.url("superset"), env["SUPERSET_ADMIN_USER"],
                                    env["SUPERSET_ADMIN_PASSWORD"])
    titles = {d["dashboard_title"] for d in client.dashboards()}
    assert {"MoviesForYou: Audience", "MoviesForYou: Catalogue",
            "MoviesForYou: Model and pipeline health"} <= titles


def test_the_airflow_viewer_may_look_but_not_trigger(local_stack):
    """The FAB auth manager's roles: the .env viewer reads the DAG's runs and is refused
    a new one; the admin's token is another user's."""
    env = local_stack.env_values
    token = local_stack.airflow_token(env["AIRFLOW_VIEWER_USER"], env["AIRFLOW_VIEWER_PASSWORD"])
    assert local_stack.airflow("/dags/movielens_nightly/dagRuns", token)["total_entries"] >= 1
    with pytest.raises(stack.StackError, match=r"dagRuns: 403"):
        local_stack.airflow("/dags/movielens_nightly/dagRuns", token,
                            {"logical_date": None, "conf": {}})
    me = local_stack.airflow(f"/users/{env['AIRFLOW_VIEWER_USER']}", local_stack.airflow_token(),
                             api="/auth/fab/v1")
    assert [role["name"] for role in me["roles"]] == ["Viewer"]


def test_the_mlflow_server_asks_who_is_calling(local_stack):
    """Basic auth on the tracking server: nothing without the .env credentials, and its
    health check (what compose and load balancers poll) open."""
    import base64

    search = local_stack.url("mlflow", "/api/2.0/mlflow/experiments/search?max_results=1")
    env = local_stack.env_values
    for user, password in [(None, None), (env["MLFLOW_ADMIN_USER"], "wrong-password")]:
        request = urllib.request.Request(search)
        if user:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
    pair = base64.b64encode(
        f"{env['MLFLOW_ADMIN_USER']}:{env['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(search, headers={"Authorization": f"Basic {pair}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "experiments" in json.load(response)
    with urllib.request.urlopen(local_stack.url("mlflow", "/health"), timeout=30) as response:
        assert response.status == 200
