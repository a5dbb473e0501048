"""The deployment files and the dashboards as code.

- docker-compose.yml is validated by Debian's docker-compose (no engine runs here)
  and the Dockerfiles are checked line by line.
- The Superset bundle is imported into a real Superset (its own virtual
  environment, .venv-superset, from scripts/setup) pointed at the test
  warehouse; every chart's query must run, and the dashboards are screenshotted
  in headless Chromium for the docs.
- The Metabase provisioning script runs against a local stub of the Metabase
  API calls it makes (tests/metabase_stub.py); every question's SQL runs on the
  real warehouse as the read-only role.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, query, wait_for_http
from metabase_stub import MetabaseStub
from moviesforyou.foundation import embedded, warehouse
from moviesforyou.orchestration import freshness, summary

SUPERSET_VENV = ROOT / ".venv-superset"
BUNDLE = ROOT / "dashboards" / "superset"
sys.path.insert(0, str(ROOT / "dashboards"))

import metabase_provision  # noqa: E402
import superset_bundle  # noqa: E402

# --------------------------------------------------------------------------- compose


def test_compose_file_is_valid(tmp_path):
    """`docker-compose config` on the file, with .env.example as the .env."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    done = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"warehouse", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "mlflow", "api", "superset",
            "metabase", "metabase-provision"} <= set(services)
    one_shots = {"airflow-init", "metabase-provision"}
    for name, service in services.items():
        if name not in one_shots:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            expected = ("service_completed_successfully" if dependency in one_shots
                        else "service_healthy")
            assert rule["condition"] == expected, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert source.startswith(("./", "/")) or source in config["volumes"], source
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == (
        "LocalExecutor")


def test_every_image_is_pinned_to_a_version():
    """No ``latest`` and no bare major version: compose's images and the Dockerfiles'
    bases name a full version, and the project's image is the project's version."""
    import tomllib

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {name: service["image"] for name, service in compose["services"].items()
              if "image" in service}
    images["x-project"] = compose["x-project"]["image"]
    bases = {str(path.relative_to(ROOT)): line.split()[1]
             for path in (ROOT / "docker").rglob("Dockerfile")
             for line in path.read_text().splitlines() if line.startswith("FROM ")}
    for where, image in {**images, **bases}.items():
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), (where, image)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert images["x-project"] == f"moviesforyou:{version}"
    # the Superset image is the release the tests import the dashboards into
    tested = dict(re.findall(r"^([\w-]+)==([\d.]+)", (
        ROOT / "dashboards" / "superset-requirements.txt").read_text(), flags=re.M))
    assert bases["docker/superset/Dockerfile"] == f"apache/superset:{tested['apache-superset']}"
    assert images["superset"] == f"moviesforyou-superset:{tested['apache-superset']}"
    assert f"psycopg2-binary=={tested['psycopg2-binary']}" in (
        ROOT / "docker" / "superset" / "Dockerfile").read_text()


def test_no_secret_in_the_compose_file():
    text = (ROOT / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|FERNET_KEY|_PASS)\b.*:", line):
            assert "${" in line or line.strip().startswith("#"), line
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    example = (ROOT / ".env.example").read_text()
    for name in set(re.findall(r"\$\{(\w+)", text)):
        assert re.search(rf"^#?\s*{name}=", example, re.M), f"{name} missing in .env.example"


INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                "SHELL"}


def dockerfile_lines(dockerfile: str) -> list[str]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / dockerfile).read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    assert not current, "a line continues past the end of the file"
    return lines


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/superset/Dockerfile"])
def test_dockerfile_syntax(dockerfile):
    """Every instruction is known, FROM comes first, COPY sources exist, exec forms are JSON."""
    lines = dockerfile_lines(dockerfile)
    instructions = [line.split()[0].upper() for line in lines]
    assert set(instructions) <= INSTRUCTIONS, set(instructions) - INSTRUCTIONS
    assert instructions[[i for i in instructions if i != "ARG"].index("FROM")] == "FROM"
    for line in lines:
        word, rest = line.split(None, 1)
        if word.upper() in ("CMD", "ENTRYPOINT") and rest.startswith("["):
            json.loads(rest)
        if word.upper() == "HEALTHCHECK" and "CMD [" in rest:
            json.loads(rest[rest.index("CMD [") + 4:])
        if word.upper() == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} is missing"


def dockerfile_copy(rest: str, root: Path, workdir: Path, ignore=None) -> list[Path]:
    """A ``COPY`` line's sources from this checkout to their places in an image whose
    root is the folder ``root`` (a relative target is under ``workdir``; a target ending
    in ``/`` is a folder)."""
    *sources, target = rest.split()
    base = root / target.lstrip("/") if target.startswith("/") else workdir / target
    placed = []
    for source in sources:
        destination = base / Path(source).name if target.endswith("/") else base
        destination.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, destination, ignore=ignore)
        else:
            shutil.copy(ROOT / source, destination)
        placed.append(destination)
    return placed


def uv_offline(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """This checkout's uv and an environment in which uv's cache stands for the package
    index: nothing is downloaded."""
    uv = subprocess.run([str(ROOT / "scripts" / "uv-path")], capture_output=True, text=True,
                        check=True).stdout.strip()
    cache = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True,
                           check=True).stdout.strip()
    return uv, {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"),
                "UV_CACHE_DIR": cache, "UV_OFFLINE": "1"}


@pytest.mark.slow
def test_the_superset_image_installs_as_its_dockerfile_says(tmp_path):
    """docker/superset/Dockerfile's own steps on a stand-in for its base image: the
    base's Superset release in ``/app/.venv`` (installed from uv's cache, as the image
    has it), the RUN line's ``uv pip install`` run from the base's WORKDIR (``/app``,
    where uv finds that environment), then the COPY lines. The image's environment then
    has the Postgres driver, imports Superset's app and the copied
    ``superset_config.py``, and makes a psycopg2 engine of its metadata URL (the
    compose stack's Superset runs on the real warehouse in tests/test_stack.py).

    ``--no-cache`` is dropped from the RUN line: offline, uv's cache stands for the
    index. The ``|| pip install`` fallback is not run (uv succeeds)."""
    uv, env = uv_offline(tmp_path)
    image = tmp_path / "image"
    app = image / "app"  # the base image's WORKDIR
    pinned = dict(re.findall(r"^([\w-]+)([=<>]=?[\d.]+)", (
        ROOT / "dashboards" / "superset-requirements.txt").read_text(), flags=re.M))
    lines = dockerfile_lines("docker/superset/Dockerfile")
    assert lines[0] == f"FROM apache/superset{pinned['apache-superset'].replace('==', ':')}"
    base = [f"{name}{spec}" for name, spec in pinned.items()
            if name not in ("psycopg2-binary", "selenium", "pyyaml")]
    app.mkdir(parents=True)
    for command in ([uv, "venv", "--quiet", "--python", "3.11", str(app / ".venv")],
                    [uv, "pip", "install", "--quiet", "--python", str(app / ".venv"), *base]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    python = app / ".venv" / "bin" / "python"

    def image_python(code: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              cwd=app, timeout=300, env={
                                  "PATH": f"{app / '.venv' / 'bin'}:{env['PATH']}",
                                  "HOME": env["HOME"], **extra})

    # the base image alone lacks the driver the compose stack needs
    assert image_python("import psycopg2").returncode != 0
    ran = []
    for line in lines[1:]:
        word, rest = line.split(None, 1)
        if word.upper() == "RUN":
            command = rest.split("||")[0].split()
            assert command[:3] == ["uv", "pip", "install"], rest
            command = [uv, *[part for part in command[1:] if part != "--no-cache"]]
            done = subprocess.run(command, cwd=app, capture_output=True, text=True, env=env,
                                  timeout=600)
            assert done.returncode == 0, (command, done.stderr[-3000:])
            ran.append(rest)
        elif word.upper() == "COPY":
            dockerfile_copy(rest, image, app)
    assert len(ran) == 1
    assert (app / "pythonpath" / "superset_config.py").is_file()
    assert (app / "docker" / "mfy-start.sh").is_file()
    assert (app / "mfy-dashboards" / "superset_bundle.py").is_file()
    probe = image_python("""
import psycopg2, sqlalchemy, superset_config
from superset.app import create_app  # noqa: F401 (the image's CMD builds it)
uri = superset_config.SQLALCHEMY_DATABASE_URI
print(psycopg2.__version__.split()[0], uri, sqlalchemy.create_engine(uri).dialect.driver)
""", PYTHONPATH=str(app / "pythonpath"), SUPERSET_HOME=str(app / "superset_home"),
        SUPERSET_SECRET_KEY="x" * 32,
        SUPERSET_DATABASE_URI="postgresql+psycopg2://superset@127.0.0.1:1/superset")
    assert probe.returncode == 0, probe.stderr[-3000:]
    version, uri, driver = probe.stdout.strip().splitlines()[-1].split()
    assert f"=={version}" == pinned["psycopg2-binary"]
    assert uri.startswith("postgresql+psycopg2://") and driver == "psycopg2"


@pytest.mark.slow
def test_the_project_image_installs_as_its_dockerfile_says(tmp_path):
    """docker/Dockerfile's own steps, where they can run without Docker: its ENV and
    WORKDIR, its COPY lines (with .dockerignore), and the ``uv`` commands of its RUN
    lines, into a fresh prefix standing for the image's root. Then the image's
    environment has what its services run (Airflow with the FAB auth manager, MLflow's
    auth app, Spark, dbt, Great Expectations, the project from the copied code) and
    nothing of the dev group.

    Not run here: ``apt-get`` (Java, curl, the Postgres client: Debian packages of the
    base image), ``pip install uv`` (this checkout's uv runs the uv steps instead),
    and ``useradd``/``mkdir``/``chown`` (the image's user). Bytecode is not compiled
    (UV_COMPILE_BYTECODE only saves start-up time)."""
    import fnmatch

    uv, env = uv_offline(tmp_path)
    image = tmp_path / "image"

    def local(path: str) -> Path:
        return image / path.lstrip("/")

    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]

    def ignore(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).resolve().relative_to(ROOT)
        return {name for name in names for pattern in ignored
                if fnmatch.fnmatch(str(relative / name), pattern.removeprefix("**/"))
                or fnmatch.fnmatch(name, pattern.removeprefix("**/"))}

    args: dict[str, str] = {}
    workdir = local("/")
    ran, skipped = [], []
    for line in dockerfile_lines("docker/Dockerfile"):
        word, rest = line.split(None, 1)
        word = word.upper()
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                value = re.sub(r"\$(\w+)", lambda m: env.get(m[1], ""), value)
                env[name] = str(local(value)) if value.startswith("/") else value
        elif word == "WORKDIR":
            workdir = local(rest)
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            dockerfile_copy(rest, image, workdir, ignore)
        elif word == "RUN":
            for command in rest.split("&&"):
                command = command.strip()
                if command.startswith("uv "):
                    done = subprocess.run(
                        [uv, *command.split()[1:]], cwd=workdir, capture_output=True, text=True,
                        env={**env, "UV_COMPILE_BYTECODE": "0", "UV_PYTHON": "3.11"},
                        timeout=900)
                    assert done.returncode == 0, (command, done.stderr[-3000:])
                    ran.append(command)
                else:
                    skipped.append(command.split()[0])
    assert ran == ["uv sync --frozen --no-dev --no-install-project", "uv sync --frozen --no-dev"]
    assert set(skipped) == {"apt-get", "rm", "pip", "useradd", "mkdir", "chown"}, skipped

    python = local("/opt/venv/bin/python")
    probe = subprocess.run([str(python), "-c", """
import importlib.util, json
import moviesforyou, airflow.providers.fab, mlflow.server.auth, pyspark, dbt.version
import great_expectations, psycopg2
print(json.dumps({"moviesforyou": moviesforyou.__file__,
                  "dev": [m for m in ("pytest", "ruff", "selenium")
                          if importlib.util.find_spec(m)]}))
"""], capture_output=True, text=True, env={"PATH": env["PATH"], "HOME": env["HOME"]},
        timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    # the code the image copied, not this checkout's
    assert Path(found["moviesforyou"]).is_relative_to(local("/opt/moviesforyou")), found
    assert found["dev"] == []
    for command in (["airflow", "version"], ["mlflow", "--version"], ["moviesforyou", "--help"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**env, "AIRFLOW_HOME": str(tmp_path / "airflow")})
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert (local("/opt/venv/bin/airflow")).exists()


# --------------------------------------------------------------------------- ops data


@pytest.fixture(scope="module")
def health_data(published):
    """The ops tables the health dashboards read, written by the pipeline's own steps."""
    import mlflow

    from spark_jobs import registry

    client = registry.configure(published)
    champion = client.get_model_version_by_alias(registry.model_name(published), "champion")
    run = client.get_run(champion.run_id)
    baselines = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/baselines.json")
    for n in range(2):
        summary.write_summary(
            published, dag_id="movielens_nightly", run_id=f"scheduled__dashboards-{n}",
            logical_date=None, started_at=None,
            tasks={"train_als": {"state": "success", "seconds": 40.0 + n},
                   "build_marts": {"state": "success", "seconds": 20.0}},
            results={"train_als": {"metrics": dict(run.data.metrics), "baselines": baselines},
                     "gate_model": {"promoted": n == 0, "champion": str(champion.version)}},
            state="success")
    # three newcomers shown their lists (the product's own logging, in SQL), one of whom
    # rated a film of it: the online measures' rows
    with contextlib.closing(warehouse.connect(published)) as conn:
        for n in range(3):
            (user,), = query(conn, "select app.sign_up('ml-100k', 30, 'F', null, null, "
                                   "'{Comedy}')")
            shown = query(conn, "select movie_id from recs.recommend_logged(%s, 10)", (user,))
            if n == 0:
                query(conn, "select app.submit_rating('ml-100k', %s, %s, 5)",
                      (user, shown[0][0]))
    freshness.measure_recs(published)
    freshness.check_freshness(published)
    return published


# --------------------------------------------------------------------------- Superset


def _free_port() -> int:
    return embedded.free_port(18800)


@pytest.fixture(scope="module")
def superset(health_data, tmp_path_factory):
    """A real Superset: SQLite metadata, the bundle imported, its web server running."""
    python = SUPERSET_VENV / "bin" / "python"
    if not (SUPERSET_VENV / "bin" / "superset").exists():
        pytest.fail(f"Superset is expected in {SUPERSET_VENV}: run scripts/setup")
    home = tmp_path_factory.mktemp("superset")
    (home / "superset_config.py").write_text(
        "SECRET_KEY = 'tests-only-not-a-secret-0123456789'\n"
        f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{home / 'superset.db'}'\n")
    env = {**os.environ, "SUPERSET_CONFIG_PATH": str(home / "superset_config.py"),
           "SUPERSET_HOME": str(home), "FLASK_APP": "superset"}
    superset_cli = str(SUPERSET_VENV / "bin" / "superset")
    for command in (["db", "upgrade"],
                    ["fab", "create-admin", "--username", "admin", "--firstname", "Ada",
                     "--lastname", "Admin", "--email", "admin@example.com", "--password",
                     "admin-test"],
                    ["init"]):
        done = subprocess.run([superset_cli, *command], env=env, capture_output=True,
                              text=True, cwd=home)
        assert done.returncode == 0, done.stderr[-3000:]
    reader_url = warehouse.reader_url(health_data)
    done = subprocess.run([str(python), str(ROOT / "dashboards" / "superset_bundle.py"),
                           "import", str(BUNDLE)],  # the URL from the environment, as compose
                          env={**env, "MFY_SUPERSET_WAREHOUSE_URL": reader_url},
                          capture_output=True, text=True, cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    port = _free_port()
    server = subprocess.Popen([superset_cli, "run", "-h", "127.0.0.1", "-p", str(port),
                               "--with-threads"], env=env, cwd=home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(server, f"{url}/health", "Superset's web server", timeout=120)
    yield {"env": env, "python": python, "url": url, "home": home}
    server.terminate()
    server.wait(30)


def test_every_superset_chart_query_runs(superset):
    done = subprocess.run([str(superset["python"]), str(ROOT / "dashboards" /
                                                        "superset_bundle.py"), "check"],
                          env=superset["env"], capture_output=True, text=True,
                          cwd=superset["home"])
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    results = {}
    for line in done.stdout.splitlines():
        match = re.match(r"\s*(\S+)\s+(\d+) rows\s+(.+)", line)
        if match:
            results[match.group(3)] = (match.group(1), int(match.group(2)))
    charts = {yaml.safe_load(p.read_text())["slice_name"] for p in BUNDLE.glob("charts/*.yaml")}
    assert set(results) == charts
    assert all(status == "ok" and rows > 0 for status, rows in results.values()), results
    assert results["Top 20 movies by Bayesian average"] == ("ok", 20)


def test_superset_dashboards_screenshots(superset, screenshots):
    saved = superset_bundle.screenshots(superset["url"], "admin", "admin-test", screenshots,
                                        "MoviesForYou")
    assert {p.name for p in saved} == {"superset-moviesforyou-catalogue.png",
                                       "superset-moviesforyou-audience.png",
                                       "superset-moviesforyou-health.png"}
    assert all(p.stat().st_size > 30_000 for p in saved)


def test_superset_export_strips_credentials(superset, tmp_path):
    written = superset_bundle.export_bundle(superset["url"], "admin", "admin-test", tmp_path,
                                            "MoviesForYou")
    assert any(w.startswith("dashboards/") for w in written)
    (database,) = tmp_path.glob("databases/*.yaml")
    uri = yaml.safe_load(database.read_text())["sqlalchemy_uri"]
    assert not re.search(r"://[^:/@]+:(?!XXXXXXXXXX@)[^@/]+@", uri), uri
    assert "@" not in uri, uri  # no user, no password, not even a placeholder

    def uuids(folder: Path, kind: str) -> set[str]:
        return {yaml.safe_load(p.read_text())["uuid"] for p in folder.glob(f"{kind}/*.yaml")}

    for kind in ("charts", "dashboards"):
        assert uuids(tmp_path, kind) == uuids(BUNDLE, kind), kind


def test_bundle_zip_fills_in_the_url_and_strip_removes_it():
    archive = superset_bundle.build_zip(BUNDLE, "postgresql://mfy_reader:s3cret@db:5432/mfy")
    names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    database = next(n for n in names if "/databases/" in n)
    content = yaml.safe_load(zipfile.ZipFile(io.BytesIO(archive)).read(database))
    assert content["sqlalchemy_uri"] == "postgresql+psycopg2://mfy_reader:s3cret@db:5432/mfy"
    stripped = superset_bundle.strip_credentials(content)
    assert "s3cret" not in json.dumps(stripped)
    assert stripped["sqlalchemy_uri"] == "postgresql+psycopg2://db:5432/mfy"
    for path in BUNDLE.rglob("*.yaml"):
        assert "s3cret" not in path.read_text()
        assert not re.search(r"://[^:/@]+:(?!XXXXXXXXXX@)[^@/]+@", path.read_text()), path
        assert not re.search(r"://[^/\s]*@", path.read_text()), path  # no user:password@


# --------------------------------------------------------------------------- Metabase


@pytest.fixture
def stub():
    server = MetabaseStub()
    yield server
    server.close()


ENV = {"MB_ADMIN_EMAIL": "admin@example.com", "MB_ADMIN_PASSWORD": "pw-for-the-stub",
       "MFY_READER_PASSWORD": "reader-pw", "MFY_WAREHOUSE_HOST": "warehouse"}


def test_metabase_provisioning_sets_up_everything_once(stub):
    spec = json.loads(metabase_provision.SPEC.read_text())
    mb = metabase_provision.Metabase(stub.url)
    mb.wait_until_up(10)
    assert mb.log_in(ENV["MB_ADMIN_EMAIL"], ENV["MB_ADMIN_PASSWORD"]) is True
    result = metabase_provision.provision(mb, spec, ENV)

    (database,) = stub.databases.values()
    assert database["engine"] == "postgres"
    assert database["details"]["user"] == "mfy_reader"
    assert database["details"]["password"] == "reader-pw"
    assert {c["name"] for c in stub.cards.values()} == {q["name"] for q in spec["questions"]}
    for card in stub.cards.values():
        assert card["dataset_query"]["type"] == "native"
        assert card["dataset_query"]["database"] == database["id"]
    assert {d["name"] for d in stub.dashboards.values()} == {d["name"] for d in
                                                             spec["dashboards"]}
    for dashboard in stub.dashboards.values():
        assert dashboard["dashcards"] and all(c["card_id"] in stub.cards
                                              for c in dashboard["dashcards"])
    assert len(result["cards"]) == len(spec["questions"])

    # a second run logs in and updates in place: nothing duplicated
    again = metabase_provision.Metabase(stub.url)
    assert again.log_in(ENV["MB_ADMIN_EMAIL"], ENV["MB_ADMIN_PASSWORD"]) is False
    metabase_provision.provision(again, spec, ENV)
    assert len(stub.cards) == len(spec["questions"]) and len(stub.dashboards) == 3
    assert len(stub.databases) == 1 and len(stub.collections) == 1
    # and exporting gives the spec back, without connection details
    exported = metabase_provision.export(again, spec)
    assert exported == {**spec, "questions": [{k: q.get(k) for k in (
        "name", "description", "display", "sql", "visualization_settings")}
        for q in spec["questions"]]}
    assert "reader-pw" not in json.dumps(exported)


def test_metabase_provisioning_refuses_a_wrong_password(stub):
    mb = metabase_provision.Metabase(stub.url)
    mb.log_in(ENV["MB_ADMIN_EMAIL"], ENV["MB_ADMIN_PASSWORD"])
    other = metabase_provision.Metabase(stub.url)
    with pytest.raises(metabase_provision.MetabaseError, match="HTTP 401"):
        other.log_in(ENV["MB_ADMIN_EMAIL"], "wrong")


def test_every_metabase_question_runs_as_the_reader(health_data):
    spec = json.loads(metabase_provision.SPEC.read_text())
    reader = warehouse.connect(dataclasses.replace(
        health_data, warehouse_url=warehouse.reader_url(health_data)))
    try:
        for question in spec["questions"]:
            rows = query(reader, question["sql"])
            assert rows, f"{question['name']}: no rows"
    finally:
        reader.close()
