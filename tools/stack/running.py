"""Running the plan: the warehouse as the postgres image makes it, each service in
dependency order until healthy, the Airflow API, and stopping it all."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from moviesforyou.foundation import embedded
from stack.compose import COMPOSE_FILE, ROOT, StackError, load_compose, read_env_file
from stack.plan import Plan, Service

log = logging.getLogger(__name__)

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

    def session_pids(self, name: str) -> list[int]:
        """Every live process of service ``name``: its session, which the service's
        children (an executor's workers, their task runners in process groups of their
        own) stay in."""
        session = self.processes[name].pid
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rpartition(")")[2].split()
                if int(fields[3]) == session and fields[0] != "Z":
                    pids.append(int(stat.parent.name))
        return pids

    def kill(self, name: str) -> list[int]:
        """SIGKILL service ``name`` and every process it started, as a lost container or
        the OOM killer would: no handler runs. Returns the pids killed."""
        pids = self.session_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.processes[name].wait()
        deadline = time.time() + 30
        while self.session_pids(name) and time.time() < deadline:
            time.sleep(0.2)
        return pids

    def restart(self, name: str) -> None:
        """Start service ``name`` again (``docker compose up``) and wait until healthy."""
        self._healthy.discard(name)
        self.processes[name] = self._spawn(self.services[name])
        self._wait(name, "service_healthy")

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
