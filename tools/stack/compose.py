"""Compose's own rules, read natively: interpolation, the .env file, the compose
file, the Dockerfiles and the base images they start from."""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from moviesforyou.foundation.errors import MoviesForYouError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
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


