"""The embedded PostgreSQL server: one cluster under ``$MFY_HOME/warehouse``.

It listens on 127.0.0.1 only, runs Debian's server binaries when they are
installed and those bundled in the ``pgserver`` wheel otherwise, and runs as its
own system user when we are root (``initdb`` refuses root). ``start`` and
``stop`` are safe to call any number of times.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from moviesforyou.foundation.config import DEFAULT_PORT
from moviesforyou.foundation.errors import WarehouseError

log = logging.getLogger(__name__)

DATABASE = "moviesforyou"
SUPERUSER = "postgres"

#: System user that runs the embedded server when we are root (initdb refuses root).
SERVER_OS_USER = "mfy-postgres"

_SERVER_CONF = """
# --- written by moviesforyou: embedded warehouse ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
max_connections = 100
shared_buffers = '256MB'
work_mem = '64MB'
maintenance_work_mem = '512MB'
max_wal_size = '4GB'
checkpoint_timeout = '15min'
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
"""


def find_pg_bin(preferred: Path | None = None) -> Path:
    """Locate a folder holding ``initdb``, ``pg_ctl``, ``postgres`` and ``psql``.

    Order: ``MFY_PG_BIN``; Debian's newest ``/usr/lib/postgresql/<v>/bin``; the
    binaries bundled with the ``pgserver`` wheel.
    """
    candidates: list[Path] = []
    if preferred:
        candidates.append(preferred)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    # the pgserver wheel ships a whole server under pginstall/; importing it has side effects
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")
    for folder in candidates:
        if all((folder / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise WarehouseError(
        "no PostgreSQL server binaries found: install the locked environment "
        "(it carries pgserver), Debian's postgresql package, or set MFY_PG_BIN"
    )


def port_is_free(port: int, *, reuse_address: bool = False) -> bool:
    """Nothing listens on ``port`` and it can be bound on 127.0.0.1. Binding is the test
    that counts: a port in the kernel's ephemeral range may be the local end of some
    client's connection, which answers no connect but makes a server's bind fail (a
    Spark master then moved its UI to the next port). ``reuse_address`` binds as
    PostgreSQL does (``SO_REUSEADDR``: a port its own last run left in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse_address:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start: int) -> int:
    """The first port from ``start`` that is free (:func:`port_is_free`)."""
    for port in range(start, start + 200):
        if port_is_free(port):
            return port
    raise WarehouseError(f"no free TCP port in {start}..{start + 199}")


def _os_user_for_server() -> pwd.struct_passwd | None:
    """The OS account to run postgres as: ourselves, or a system user when root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SERVER_OS_USER],
            check=True, capture_output=True,
        )
        return pwd.getpwnam(SERVER_OS_USER)


def _let_others_traverse(path: Path) -> None:
    """When root hands a folder to the server's OS user, every ancestor must be searchable."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in a project-local folder.

    Args:
        directory: where the cluster lives (``pgdata/``, ``postgres.log``, ``server.json``).
        port: TCP port on 127.0.0.1, chosen on first start when ``None``.
        bin_dir: folder with the server binaries, found by :func:`find_pg_bin` when ``None``.
    """

    directory: Path
    port: int | None = None
    bin_dir: Path | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        #: a port the caller asked for (``MFY_WAREHOUSE_PORT``) is kept, taken or not
        self._pinned = self.port is not None
        state = self._read_state()
        if state:
            self.port = self.port or state["port"]
            if self.bin_dir is None and Path(state["bin_dir"]).exists():
                self.bin_dir = Path(state["bin_dir"])
        self.bin_dir = find_pg_bin(self.bin_dir)

    @property
    def data_dir(self) -> Path:
        return self.directory / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def _state_file(self) -> Path:
        return self.directory / "server.json"

    def _read_state(self) -> dict | None:
        if self._state_file.exists():
            return json.loads(self._state_file.read_text())
        return None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, exe: str, *args: str) -> subprocess.CompletedProcess:
        user = _os_user_for_server()
        kwargs = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
        return subprocess.run(
            [str(self.bin_dir / exe), *args],
            capture_output=True, text=True,
            cwd=self.directory if self.directory.exists() else None,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}, **kwargs,
        )

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialized():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0

    def _initialize(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        user = _os_user_for_server()
        if user:
            _let_others_traverse(self.directory)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        if self.data_dir.exists():  # a failed earlier initdb
            shutil.rmtree(self.data_dir)
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8",
        )
        if result.returncode != 0:
            raise WarehouseError(f"initdb failed in {self.data_dir}:\n{result.stderr.strip()}")
        self.port = self.port or free_port(DEFAULT_PORT)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_SERVER_CONF.format(port=self.port))
        self._state_file.write_text(
            json.dumps({"port": self.port, "bin_dir": str(self.bin_dir)}, indent=2)
        )
        log.info("initialised embedded PostgreSQL in %s (port %s)", self.data_dir, self.port)

    def start(self) -> bool:
        """Start the server, creating the cluster first if needed.

        Returns:
            True when this call started it, False when it was already running.
        """
        with self._lock():
            if not self.is_initialized():
                self._initialize()
            if self.is_running():
                return False
            self._move_off_a_taken_port()
            # on self.port (recorded, asked for, or moved to), whatever postgresql.conf says
            result = self._run(
                "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
                "-l", str(self.log_file), "-o", f"-p {self.port}",
            )
            if result.returncode != 0:
                tail = ""
                if self.log_file.exists():
                    tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
                raise WarehouseError(
                    f"the embedded PostgreSQL in {self.data_dir} did not start "
                    f"(port {self.port}):\n{result.stderr.strip()}\n{tail}"
                )
            self._record_port()
            log.info("started embedded PostgreSQL on 127.0.0.1:%s", self.port)
            return True

    def _move_off_a_taken_port(self) -> None:
        """The recorded port is taken by another program (another home's server, say):
        start on a free one instead and record it, unless the port was asked for."""
        if port_is_free(self.port, reuse_address=True):
            return
        if self._pinned:
            raise WarehouseError(
                f"port {self.port} (MFY_WAREHOUSE_PORT) is taken by another program: "
                f"stop it, or unset MFY_WAREHOUSE_PORT to let the warehouse in "
                f"{self.directory} choose a free port")
        taken, self.port = self.port, free_port(DEFAULT_PORT)
        log.warning("port %s of the embedded PostgreSQL in %s is taken by another program: "
                    "it starts on port %s, recorded in %s", taken, self.directory, self.port,
                    self._state_file)

    def _record_port(self) -> None:
        """The port it started on, in ``server.json``: the home's next command finds it."""
        state = self._read_state() or {}
        if state.get("port") != self.port:
            self._state_file.write_text(json.dumps(
                {**state, "port": self.port, "bin_dir": str(self.bin_dir)}, indent=2))

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server (``mode`` as pg_ctl's: ``fast``, or ``immediate``, which is a
        crash: no checkpoint, recovery at the next start). False when it was not running."""
        with self._lock():
            if not self.is_running():
                return False
            result = self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir))
            if result.returncode != 0:
                raise WarehouseError(f"pg_ctl stop failed: {result.stderr.strip()}")
            return True

    def require_passwords(self) -> None:
        """Ask every TCP connection for its role's password (SCRAM), as a server's
        ``pg_hba.conf`` would, instead of the embedded default, trust on 127.0.0.1.
        The roles need passwords first (``alter role ... password``)."""
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by moviesforyou: passwords required (EmbeddedPostgres.require_passwords)\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        result = self._run("pg_ctl", "reload", "-D", str(self.data_dir))
        if result.returncode != 0:
            raise WarehouseError(f"pg_ctl reload failed: {result.stderr.strip()}")

    def url(self, user: str = SUPERUSER, database: str = DATABASE) -> str:
        return f"postgresql://{quote(user)}@127.0.0.1:{self.port}/{quote(database)}"

    def version(self) -> str:
        return self._run("postgres", "--version").stdout.strip()
