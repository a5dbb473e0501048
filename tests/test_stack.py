"""The server deployment, run natively from docker-compose.yml (moviesforyou.stack).

The compose file's own commands and environment run on this machine against one
real PostgreSQL with the databases and roles of docker/postgres/init-databases.sh,
passwords required: airflow-init, the Airflow api-server, scheduler,
dag-processor and triggerer on a Postgres metadata database, the MLflow server on
its Postgres store, and the API as the read-only role. The scheduler then runs
the nightly DAG's scheduled run on its own, end to end.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request

import psycopg2
import pytest
from cryptography.fernet import Fernet

from conftest import QUICK_TRAIN, ROOT
from moviesforyou import stack
from moviesforyou.config import Settings

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
            secret = Fernet.generate_key().decode() if key == "AIRFLOW_FERNET_KEY" \
                else secrets.token_urlsafe(48)
            line = f"{key}={secret}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")


def test_the_plan_maps_hosts_ports_and_volumes(tmp_path):
    write_env(tmp_path / ".env")
    planned = stack.LocalStack(tmp_path / "state", tmp_path / ".env")
    assert set(planned.services) == {"airflow-init", "airflow-apiserver", "airflow-scheduler",
                                     "airflow-dag-processor", "airflow-triggerer", "mlflow",
                                     "api"}
    assert planned.skipped() == ["metabase", "metabase-provision", "superset"]
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
    assert planned.services["api"].command[-4:] == [
        "--port", str(planned.plan.local_port("api", 8000)), "--workers", "2"]


# --------------------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory, ml100k):
    folder = tmp_path_factory.mktemp("stack")
    folder.chmod(0o755)  # the embedded server's OS user walks into it when we are root
    write_env(folder / ".env", MFY_SOURCE=str(ml100k), MFY_TRAIN_CONF=json.dumps(QUICK_TRAIN))
    running = stack.LocalStack(folder / "state", folder / ".env")
    with running:
        yield running


def test_the_compose_services_run_a_scheduled_nightly(local_stack):
    run = local_stack.wait_for_dag_run("movielens_nightly", timeout=1800)
    assert run["state"] == "success", local_stack.log_tail("airflow-scheduler")
    env = local_stack.env_values
    warehouse_port = local_stack.plan.local_port("warehouse", 5432)

    # training logged to the MLflow server over HTTP; its registry lives in Postgres
    from mlflow import MlflowClient

    # both URIs: an earlier test in this process may have set MLflow's global registry
    client = MlflowClient(tracking_uri=local_stack.url("mlflow"),
                          registry_uri=local_stack.url("mlflow"))
    name = Settings.from_env({}).training.model_name
    champion = client.get_model_version_by_alias(name, "champion")
    run_info = client.get_run(champion.run_id)
    assert run_info.data.metrics  # the training's figures, sent over HTTP
    with psycopg2.connect(host="127.0.0.1", port=warehouse_port, dbname="mlflow",
                          user="mlflow", password=env["MLFLOW_DB_PASSWORD"]) as conn, \
            conn.cursor() as cur:
        cur.execute("select version from model_versions where name = %s", (name,))
        assert str(champion.version) in {str(v) for (v,) in cur.fetchall()}
    conn.close()

    # the API serves the publish, reading as mfy_reader
    url = local_stack.url("api", "/api/users/1/recommendations?k=5")
    with urllib.request.urlopen(url, timeout=30) as response:
        answer = json.load(response)
    assert len(answer["recommendations"]) == 5
    assert answer["model_version"] == str(champion.version)
    with psycopg2.connect(host="127.0.0.1", port=warehouse_port, dbname="moviesforyou",
                          user="postgres", password=env["POSTGRES_PASSWORD"]) as conn, \
            conn.cursor() as cur:
        cur.execute("select distinct usename from pg_stat_activity "
                    "where application_name = 'moviesforyou-api'")
        assert cur.fetchall() == [("mfy_reader",)]
    conn.close()


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
