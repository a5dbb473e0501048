"""The plan: each compose service as a native command, environment and ports."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from moviesforyou.foundation import embedded
from stack.compose import (
    BASE_IMAGES,
    FIRST_PORT,
    PROJECT_DOCKERFILE,
    ROOT,
    BaseImage,
    Image,
    StackError,
    read_dockerfile,
    read_env_file,
)

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


