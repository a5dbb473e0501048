"""The server deployment's services, run natively from ``docker-compose.yml``.

No Docker engine runs on a developer's laptop or in CI here, yet what the compose
file's services do can still run: this module reads the compose file itself and,
for each service built from the project's image (``x-project``: airflow-init,
the Airflow api-server, scheduler, dag-processor and triggerer, the MLflow
server, the API) and Superset's, runs **the same command with the same environment** that
compose would give it: the image's ``ENV`` lines (``docker/Dockerfile``), then
``env_file``, then ``environment``, interpolated from the ``.env`` file as compose
interpolates them. Only what a container would see differently is mapped:

* host names: ``warehouse:5432``, ``mlflow:5000``, ``airflow-apiserver:8080`` and
  a bare ``warehouse`` become ``127.0.0.1`` and a free local port;
* the container's paths: the image's ``WORKDIR`` (``/opt/moviesforyou``) is this
  checkout, ``/opt/venv`` its ``.venv``, and every volume (``airflow-home``,
  ``mfy-state``, ``mlflow-artifacts``, ...) a folder under the stack's state folder;
* servers listen on 127.0.0.1 only (compose publishes them on 127.0.0.1 too).

The ``warehouse`` service (the ``postgres`` image) is one embedded PostgreSQL
cluster: its ``POSTGRES_USER`` gets ``POSTGRES_PASSWORD``, the scripts mounted
into ``/docker-entrypoint-initdb.d`` (``docker/postgres/init-databases.sh``) run
with the service's environment, and then every connection must give its role's
password, as on the server. Services start in ``depends_on`` order, each waiting
for its dependencies' conditions (``service_healthy`` runs the compose
healthcheck, ``service_completed_successfully`` waits for exit status 0).

Services built from another Dockerfile on a base image this machine has the
programs of (:data:`BASE_IMAGES`: ``apache/superset``, whose Superset release is in
``.venv-superset``) run too: the Dockerfile's ``CMD`` unless compose gives a command,
the base image's ``ENV`` and then the Dockerfile's, its environment's ``bin`` first on
``PATH``, and what its ``COPY`` lines put in the image copied from this checkout
under the state folder (``images/<service>/...``) at each start. Metabase (a Java
application from its own image, not installed here) and what depends on it are
listed by :func:`LocalStack.skipped` and not started.

Usage: ``make stack-local`` (``python tools/stack.py --env-file .env``), or
:class:`LocalStack` as a context manager (``tests/test_stack.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click
import yaml

from moviesforyou.foundation import embedded
from moviesforyou.foundation.errors import MoviesForYouError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT_DOCKERFILE = ROOT / "docker" / "Dockerfile"

#: Where a service's first ``localhost`` port goes: each published container port
#: gets a free host port from here up.
FIRST_PORT = 28000


class StackError(MoviesForYouError):
    """The compose file cannot be run natively, or one of its services failed."""


# --------------------------------------------------------------------------- compose rules

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: Mapping[str, str], where: str = "docker-compose.yml") -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``.

    Raises:
        StackError: a ``?`` variable is unset (or empty, with ``:?``), naming it.
    """
    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value, op, arg = env.get(name), match["op"], match["arg"] or ""
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("-"):
            return arg if empty else value
        if op and op.endswith("?"):
            if empty:
                raise StackError(f"{where}: {name} is required: {arg or 'unset'}")
            return value
        if op and op.endswith("+"):
            return "" if empty else arg
        if value is None:
            log.warning("%s: %s is not set; compose substitutes an empty string", where, name)
        return value or ""

    return _VARIABLE.sub(replace, text)


def _interpolate_tree(node, env: Mapping[str, str], where: str):
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [_interpolate_tree(item, env, where) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env, f"{where}: {key}")
                for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as compose reads an ``env_file`` and ``.env`` (comments, blank
    lines and ``export`` ignored; one pair of surrounding quotes removed)."""
    values = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line:
            raise StackError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def load_compose(path: Path, env: Mapping[str, str]) -> dict:
    """The compose file with its YAML anchors merged and every string interpolated."""
    return _interpolate_tree(yaml.safe_load(Path(path).read_text()), env, Path(path).name)


@dataclass
class Image:
    """What a Dockerfile gives its containers, as far as running them natively needs."""

    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    #: (source in the build context, destination in the image), in order
    copies: list[tuple[str, str]] = field(default_factory=list)
    cmd: list[str] | None = None


def read_dockerfile(dockerfile: Path, context: Path = ROOT) -> Image:
    """A Dockerfile's base, final ``ENV`` values (``$VAR`` resolved against earlier ones;
    the base image's own, like ``$PATH``, kept as written), last ``WORKDIR``, its
    ``COPY`` lines from the build ``context`` (relative destinations against the
    ``WORKDIR`` of the time) and its ``CMD``."""
    text = re.sub(r"\\\n", " ", Path(dockerfile).read_text())
    image = Image()
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2 or words[0].startswith("#"):
            continue
        instruction, rest = words[0].upper(), words[1]
        if instruction == "FROM":
            image.base = rest.split()[0]
        elif instruction == "WORKDIR":
            image.workdir = rest.strip()
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                image.env[key] = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                                        lambda m: image.env.get(m[1], m[0]), value)
        elif instruction == "COPY" and not rest.startswith("--from"):
            # Docker's rules: a folder's contents go to the destination; a file goes
            # into it when it ends with "/", else becomes it; relative to the WORKDIR
            *sources, target = shlex.split(rest)
            into = target.endswith("/") or target == "."
            target = posixpath.normpath(posixpath.join(image.workdir, target))
            for source in sources:
                if into and not (Path(context) / source).is_dir():
                    image.copies.append((source, posixpath.join(target, Path(source).name)))
                else:
                    image.copies.append((source, target))
        elif instruction == "CMD":
            image.cmd = json.loads(rest) if rest.startswith("[") else ["sh", "-c", rest]
    return image


@dataclass(frozen=True)
class BaseImage:
    """A base image the project builds on and this machine has the programs of."""

    #: the base image's own ``ENV`` that its programs rely on
    env: dict[str, str]
    #: its Python environment here, relative to the checkout (``scripts/setup`` makes it)
    venv: str


#: Base images whose derived services run here. ``apache/superset``: the ``ENV`` of
#: its Dockerfile that Superset's CLI and web server read; the same Superset release
#: (dashboards/superset-requirements.txt) is in ``.venv-superset``.
BASE_IMAGES = {
    "apache/superset": BaseImage(env={"SUPERSET_HOME": "/app/superset_home",
                                      "PYTHONPATH": "/app/pythonpath",
                                      "FLASK_APP": "superset.app:create_app()"},
                                 venv=".venv-superset"),
}


# --------------------------------------------------------------------------- the plan


@dataclass
class Service:
    """One compose service as it runs natively."""

    name: str
    command: list[str]
    env: dict[str, str]
    depends_on: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] | None = None
    #: how long the healthcheck may keep failing: start_period + retries x interval
    health_timeout: float = 300.0
    #: the published container port and the local port it got
    ports: dict[int, int] = field(default_factory=dict)
    oneshot: bool = False
    #: the service's ``working_dir`` mapped, else the project's root (the image's WORKDIR)
    cwd: Path | None = None
    #: what its image's ``COPY`` lines put in place: (local path, file or folder it is)
    copies: list[tuple[Path, Path]] = field(default_factory=list)


def _seconds(text: str | None, default: float) -> float:
    if not text:
        return default
    total = 0.0
    for amount, unit in re.findall(r"([\d.]+)(ms|s|m|h)", str(text)):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def _published_ports(service: dict) -> list[int]:
    ports = []
    for entry in service.get("ports", []):
        container = str(entry).split(":")[-1].split("/")[0]
        ports.append(int(container))
    return ports


class Plan:
    """How each compose service maps onto this machine: ports, paths and host names."""

    def __init__(self, compose: dict, env_file_values: dict[str, str], state: Path,
                 *, first_port: int = FIRST_PORT, project_root: Path = ROOT,
                 dockerfile: Path = PROJECT_DOCKERFILE):
        self.compose, self.state, self.root = compose, Path(state), Path(project_root)
        self.services: dict = compose["services"]
        self.project_image = compose["x-project"]["image"]
        project = read_dockerfile(dockerfile)
        self.image_env, workdir = project.env, project.workdir
        #: services built from another Dockerfile on a base image this machine has
        self.images: dict[str, tuple[Image, BaseImage]] = {}
        for name, service in self.services.items():
            build = service.get("build") or {}
            path = (self.root / build.get("context", ".") / build["dockerfile"]).resolve() \
                if isinstance(build, dict) and "dockerfile" in build else None
            if path is None or path == Path(dockerfile).resolve():
                continue
            image = read_dockerfile(path, (self.root / build.get("context", ".")).resolve())
            base = BASE_IMAGES.get(image.base.rpartition(":")[0] or image.base)
            if base is not None:
                self.images[name] = (image, base)
        #: per service: container paths its image's COPY lines made -> local ones
        self.service_paths: dict[str, dict[str, Path]] = {}
        for name, (image, _) in self.images.items():
            paths = self.service_paths[name] = {}
            for _, destination in image.copies:
                container = Path(destination)
                for folder in [container, *container.parents][:-1]:  # not "/"
                    paths.setdefault(str(folder), self.state / "images" / name
                                     / str(folder).lstrip("/"))
        self.ports: dict[tuple[str, int], int] = {}
        port = first_port
        for name, service in self.services.items():
            for container_port in _published_ports(service):
                port = embedded.free_port(port)
                self.ports[(name, container_port)] = port
                port += 1
        # container paths -> local ones, the longest first when applied
        self.paths: dict[str, Path] = {workdir: self.root}
        venv = self.image_env.get("UV_PROJECT_ENVIRONMENT")
        if venv:
            self.paths[venv] = self.root / ".venv"
        for service in self.services.values():
            for volume in service.get("volumes", []):
                source, target = str(volume).split(":")[:2]
                local = (self.root / source).resolve() if source.startswith((".", "/")) \
                    else self.state / "volumes" / source
                if self.paths.get(target, local) != local:
                    raise StackError(f"docker-compose.yml: {target} is mounted from two "
                                     f"sources ({self.paths[target]}, {local})")
                self.paths[target] = local
        for target in ("MFY_HOME", "AIRFLOW_HOME"):  # image folders no volume covers
            path = self.image_env.get(target)
            if path and not any(path == t or path.startswith(t + "/") for t in self.paths):
                self.paths[path] = self.state / "image" / path.strip("/")
        self.env_file_values = env_file_values

    def local_port(self, service: str, container_port: int) -> int:
        return self.ports[(service, container_port)]

    def map_text(self, text: str, service: str | None = None) -> str:
        """A string as a service would see it here: host names, ports and paths mapped
        (``0.0.0.0:P`` and ``localhost:P`` of the service's own published port too)."""
        for (name, container_port), port in self.ports.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}:{container_port}\b",
                          f"127.0.0.1:{port}", text)
            if name == service:
                text = re.sub(rf"\b(localhost|0\.0\.0\.0):{container_port}\b",
                              f"127.0.0.1:{port}", text)
        paths = {**self.paths, **self.service_paths.get(service, {})}
        for target in sorted(paths, key=len, reverse=True):
            text = re.sub(rf"(?<![\w.-]){re.escape(target)}(?=/|$|[\s\"':])",
                          str(paths[target]), text)
        return text

    def _command(self, name: str, raw) -> list[str]:
        argv = shlex.split(raw) if isinstance(raw, str) else [str(word) for word in raw]
        ports = {container: port for (service, container), port in self.ports.items()
                 if service == name}
        mapped, index = [], 0
        while index < len(argv):  # a server's own --port and --host
            word = argv[index]
            flag, eq, value = word.partition("=")
            if flag in ("--port", "--host"):
                if not eq and index + 1 < len(argv):
                    value, index = argv[index + 1], index + 1
                value = str(ports.get(int(value), value)) if flag == "--port" else "127.0.0.1"
                mapped += [flag, value]
            else:
                mapped.append(self.map_text(word, name))
            index += 1
        return mapped

    def _environment(self, name: str, service: dict) -> dict[str, str]:
        if name in self.images:
            image, base = self.images[name]
            image_env = {**base.env, **image.env}
        else:
            image_env = self.image_env
        env = {"HOME": os.environ.get("HOME", "/root"), **image_env}  # Docker sets HOME
        for env_file in ([service["env_file"]] if isinstance(service.get("env_file"), str)
                         else service.get("env_file", [])):
            env.update(self.env_file_values if env_file == ".env"
                       else read_env_file(self.root / env_file))
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env.update({key: "" if value is None else str(value)
                    for key, value in environment.items()})
        # a variable that is just a host name, e.g. MFY_WAREHOUSE_HOST=warehouse
        env = {key: "127.0.0.1" if value in self.services else self.map_text(value, name)
               for key, value in env.items()}
        # the image's PATH extends its base image's: here, this machine's
        env["PATH"] = env.get("PATH", "$PATH").replace("$PATH", os.environ.get("PATH", ""))
        if name in self.images:  # the base image's programs: its environment here
            env["PATH"] = f"{self.root / self.images[name][1].venv / 'bin'}:{env['PATH']}"
        java = env.get("JAVA_HOME")
        if java and not Path(java).exists():
            env.pop("JAVA_HOME")  # the image's JDK path; Spark finds this machine's
            if os.environ.get("JAVA_HOME"):
                env["JAVA_HOME"] = os.environ["JAVA_HOME"]
        # where the container listens on all its addresses, listen on 127.0.0.1 here
        env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
        return env

    def project_services(self) -> dict[str, Service]:
        """The services of the project's image, as they run here."""
        out = {}
        for name, service in self.services.items():
            if service.get("image") != self.project_image and name not in self.images:
                continue
            check = service.get("healthcheck") or {}
            test = check.get("test")
            if isinstance(test, list) and test and test[0] == "CMD-SHELL":
                test = ["sh", "-c", " ".join(test[1:])]
            elif isinstance(test, list) and test and test[0] == "CMD":
                test = test[1:]
            elif isinstance(test, str):
                test = ["sh", "-c", test]
            depends = service.get("depends_on", {})
            if isinstance(depends, list):
                depends = {dep: "service_started" for dep in depends}
            else:
                depends = {dep: (spec or {}).get("condition", "service_started")
                           for dep, spec in depends.items()}
            timeout = (_seconds(check.get("start_period"), 0)
                       + _seconds(check.get("interval"), 30) * int(check.get("retries", 3))
                       + 60)
            command = service.get("command") or (self.images[name][0].cmd
                                                 if name in self.images else None)
            if not command:
                raise StackError(f"docker-compose.yml: {name} has no command (nor its image)")
            copies = [(self.service_paths[name][destination], self.root / source)
                      for source, destination in self.images[name][0].copies] \
                if name in self.images else []
            out[name] = Service(
                name=name, command=self._command(name, command), copies=copies,
                env=self._environment(name, service), depends_on=depends,
                healthcheck=[self.map_text(word, name) for word in test] if test else None,
                health_timeout=timeout,
                ports={c: p for (s, c), p in self.ports.items() if s == name},
                oneshot=str(service.get("restart", "")) == "no",
                cwd=Path(self.map_text(service["working_dir"], name))
                if service.get("working_dir") else self.root)
        return out


# --------------------------------------------------------------------------- running it


class LocalStack:
    """The compose deployment on this machine, started and stopped as a whole.

    Args:
        state: the stack's folder: its PostgreSQL cluster, volumes and service logs.
        env_file: the ``.env`` compose would read (``.env.example`` filled in).
        services: which project services to start (default: every one whose
            dependencies can run here; those depending on Superset or Metabase are left out).
    """

    def __init__(self, state: Path, env_file: Path, *, compose_file: Path = COMPOSE_FILE,
                 services: list[str] | None = None):
        self.state = Path(state).resolve()
        self.env_values = read_env_file(env_file)
        # as compose: the shell's variables win over the .env file's
        interpolation = {**self.env_values, **os.environ}
        self.compose = load_compose(compose_file, interpolation)
        self.plan = Plan(self.compose, self.env_values, self.state)
        runnable = self.plan.project_services()
        # a service runs here when all it depends on is the warehouse or runs here too
        changed = True
        while changed:
            changed = False
            for name, service in list(runnable.items()):
                if any(dep != "warehouse" and dep not in runnable for dep in service.depends_on):
                    del runnable[name]
                    changed = True
        if services is not None:
            unknown = set(services) - set(runnable)
            if unknown:
                raise StackError(f"cannot run {sorted(unknown)} natively; these can: "
                                 f"{sorted(runnable)}")
            runnable = {name: runnable[name] for name in services}
        self.services = runnable
        self.processes: dict[str, subprocess.Popen] = {}
        self._healthy: set[str] = set()  # services whose healthcheck has passed
        self.warehouse: embedded.EmbeddedPostgres | None = None
        self.logs = self.state / "logs"

    def skipped(self) -> list[str]:
        """Compose services this machine does not start (other images, or depending on one)."""
        return sorted(set(self.compose["services"]) - set(self.services) - {"warehouse"})

    def url(self, service: str, path: str = "") -> str:
        """``http://127.0.0.1:<port><path>`` for a service's (first) published port."""
        port = next(iter(self.services[service].ports.values()))
        return f"http://127.0.0.1:{port}{path}"

    # ---------------------------------------------------------------- warehouse

    def start_warehouse(self) -> embedded.EmbeddedPostgres:
        """The ``warehouse`` service: one PostgreSQL, its init scripts, passwords required."""
        spec = self.compose["services"]["warehouse"]
        env = {key: str(value) for key, value in spec.get("environment", {}).items()}
        superuser = env.get("POSTGRES_USER", "postgres")
        if superuser != embedded.SUPERUSER:
            raise StackError(f"docker-compose.yml: warehouse's POSTGRES_USER must be "
                             f"{embedded.SUPERUSER} here, not {superuser}")
        if not env.get("POSTGRES_PASSWORD"):
            raise StackError("the .env file: POSTGRES_PASSWORD is empty")
        ((_, port),) = [(c, p) for (s, c), p in self.plan.ports.items() if s == "warehouse"]
        server = embedded.EmbeddedPostgres(self.state / "volumes" / "warehouse-data", port=port)
        first = not server.is_initialized()
        server.start()
        self.warehouse = server
        if not first:
            return server
        import psycopg2
        from psycopg2 import sql

        with psycopg2.connect(server.url(database="postgres")) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("alter role {} password %s").format(sql.Identifier(superuser)),
                        (env["POSTGRES_PASSWORD"],))
        conn.close()
        script_env = {**os.environ, **env, "PGHOST": "127.0.0.1", "PGPORT": str(port),
                      "PGPASSWORD": env["POSTGRES_PASSWORD"],
                      "PATH": f"{server.bin_dir}:{os.environ.get('PATH', '')}"}
        for volume in spec.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sh"):
                log.info("warehouse: running %s", source)
                done = subprocess.run(["bash", str((ROOT / source).resolve())], env=script_env,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise StackError(f"{source} failed (status {done.returncode}):\n"
                                     f"{done.stderr.strip()}")
        server.require_passwords()
        return server

    # ---------------------------------------------------------------- services

    def _spawn(self, service: Service) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        for path in self.plan.paths.values():
            if self.state in path.parents:
                path.mkdir(parents=True, exist_ok=True)
        for local, source in service.copies:  # the image's files, copied as COPY does
            if not source.exists():
                raise StackError(f"{service.name}: its Dockerfile copies {source}, "
                                 "which is missing")
            local.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, local, dirs_exist_ok=True)
            else:
                shutil.copy2(source, local)
        log.info("%s: %s", service.name, shlex.join(service.command))
        with open(self.logs / f"{service.name}.log", "ab") as log_file:  # the child keeps it
            return subprocess.Popen(service.command, env=service.env, cwd=service.cwd,
                                    stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _passes_healthcheck(self, service: Service) -> bool:
        if service.healthcheck is None:
            return True
        done = subprocess.run(service.healthcheck, env=service.env, cwd=self.plan.root,
                              capture_output=True, timeout=120)
        return done.returncode == 0

    def _wait(self, name: str, condition: str) -> None:
        if name == "warehouse":
            return  # started and checked before anything else
        service, process = self.services[name], self.processes[name]
        deadline = time.time() + (24 * 3600 if condition == "service_completed_successfully"
                                  else service.health_timeout)
        while time.time() < deadline:
            status = process.poll()
            if condition == "service_completed_successfully":
                if status is not None:
                    if status != 0:
                        raise StackError(f"{name} exited with status {status}:\n"
                                         f"{self.log_tail(name)}")
                    return
            else:
                if status is not None:
                    raise StackError(f"{name} stopped (status {status}):\n{self.log_tail(name)}")
                if condition == "service_started" or name in self._healthy:
                    return
                if self._passes_healthcheck(service):
                    self._healthy.add(name)
                    return
            time.sleep(1)
        raise StackError(f"{name} was not {condition.removeprefix('service_')} within "
                         f"{service.health_timeout:.0f} s:\n{self.log_tail(name)}")

    def start(self) -> None:
        """The warehouse, then every service once its dependencies' conditions hold."""
        self.start_warehouse()
        pending = dict(self.services)
        while pending:
            ready = [s for s in pending.values()
                     if all(dep == "warehouse" or dep in self.processes for dep in s.depends_on)]
            if not ready:
                raise StackError(f"docker-compose.yml: a depends_on cycle among {sorted(pending)}")
            for service in ready:
                for dep, condition in service.depends_on.items():
                    self._wait(dep, condition)
                self.processes[service.name] = self._spawn(service)
                del pending[service.name]
        for name in self.services:
            if not self.services[name].oneshot:
                self._wait(name, "service_healthy")

    def stop(self) -> None:
        """Every service (SIGTERM to its process group, then SIGKILL), then the warehouse."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        self._healthy.clear()
        if self.warehouse is not None:
            self.warehouse.stop()

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def remove(self) -> None:
        """Delete the stack's state (``docker compose down -v``)."""
        shutil.rmtree(self.state, ignore_errors=True)

    # ---------------------------------------------------------------- Airflow's REST API

    def airflow_token(self, user: str | None = None, password: str | None = None) -> str:
        """A JWT from the api-server for ``user`` (default: the ``.env`` file's admin)."""
        if user is None:
            user = self.env_values.get("AIRFLOW_ADMIN_USER", "admin")
            password = self.env_values["AIRFLOW_ADMIN_PASSWORD"]
        body = json.dumps({"username": user, "password": password}).encode()
        request = urllib.request.Request(self.url("airflow-apiserver", "/auth/token"), body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def airflow(self, path: str, token: str, body: dict | None = None,
                method: str | None = None, *, api: str = "/api/v2") -> dict:
        """One call to Airflow's REST API (``api``: its public one, or e.g. the FAB auth
        manager's ``/auth/fab/v1``) with a token."""
        request = urllib.request.Request(
            self.url("airflow-apiserver", f"{api}{path}"),
            json.dumps(body).encode() if body is not None else None,
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise StackError(f"Airflow API {path}: {exc.code} {exc.read()[:500]!r}") from None

    def wait_for_dag_run(self, dag_id: str, *, run_type: str = "scheduled",
                         timeout: float = 1800, poll: float = 5) -> dict:
        """The first run of ``dag_id`` of ``run_type`` once it has finished."""
        started = time.time()
        token, token_at = self.airflow_token(), started
        while time.time() - started < timeout:
            if time.time() - token_at > 600:  # tokens expire
                token, token_at = self.airflow_token(), time.time()
            runs = self.airflow(f"/dags/{dag_id}/dagRuns?order_by=run_after", token)["dag_runs"]
            runs = [r for r in runs if r["run_type"] == run_type]
            if runs and runs[0]["state"] in ("success", "failed"):
                return runs[0]
            for name, process in self.processes.items():
                if process.poll() is not None and not self.services[name].oneshot:
                    raise StackError(f"{name} stopped while waiting for {dag_id}:\n"
                                     f"{self.log_tail(name)}")
            time.sleep(poll)
        raise StackError(f"no finished {run_type} run of {dag_id} within {timeout:.0f} s")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=".env", show_default=True,
              help="The .env docker compose would read (.env.example, filled in).")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path),
              help="The stack's volumes, PostgreSQL and logs [default: MFY_HOME/stack].")
def main(env_file: Path, state: Path | None) -> None:
    """docker-compose.yml's services run natively, without Docker, until Ctrl-C.

    The project image's services (airflow-init, the Airflow api-server, scheduler,
    dag-processor and triggerer, MLflow, the API) and Superset (from .venv-superset)
    with compose's own commands and environment, on one PostgreSQL made as the
    warehouse service makes it. Each service's log is in STATE/logs.
    """
    from rich.console import Console
    from rich.table import Table

    from moviesforyou.foundation.config import Settings

    console = Console()
    running = LocalStack(state or Settings.from_env().home / "stack", env_file)
    console.print(f"starting {', '.join(running.services)}; not here: "
                  f"{', '.join(running.skipped())} (other images)")
    with running:
        table = Table(title="the stack, on 127.0.0.1")
        table.add_column("service")
        table.add_column("compose port")
        table.add_column("here")
        for (service, container), port in running.plan.ports.items():
            if service == "warehouse" or service in running.services:
                table.add_row(service, str(container), f"127.0.0.1:{port}")
        console.print(table)
        console.print(f"logs: {running.logs}; Ctrl-C stops every service")
        try:
            while all(p.poll() is None for n, p in running.processes.items()
                      if not running.services[n].oneshot):
                time.sleep(2)
            raise MoviesForYouError(f"a service stopped; see {running.logs}")
        except KeyboardInterrupt:
            console.print("stopping")


if __name__ == "__main__":
    main()
