"""Configuration, read from environment variables only.

Every setting has a sensible default so that a fresh checkout runs with none of
them set. ``Settings.from_env()`` is the single place that reads the
environment; everything else receives a ``Settings``.

| variable | default | meaning |
|---|---|---|
| ``MFY_HOME`` | ``<project>/.mfy`` | project-local state: embedded warehouse, downloads |
| ``MFY_WAREHOUSE_URL`` | unset | PostgreSQL URL of a real server; unset means embedded |
| ``MFY_WAREHOUSE_PORT`` | first free port from 54329 | TCP port of the embedded server |
| ``MFY_PG_BIN`` | auto | folder with ``initdb``/``pg_ctl``/``postgres``/``psql`` |
| ``MFY_DATASET`` | ``ml-100k`` | default MovieLens release |
| ``MFY_SOURCE`` | GroupLens URL | URL, zip or folder to ingest instead of the GroupLens URL |
| ``MFY_SOURCE_SHA256`` | unset | pinned SHA-256 of the release zip |
| ``MFY_OWNER_ROLE`` | ``mfy_owner`` | role that owns and writes the warehouse |
| ``MFY_READER_ROLE`` | ``mfy_reader`` | read-only role for dashboards and the API |
| ``MFY_READER_PASSWORD`` | unset | password given to the reader role when it is created |
| ``MFY_DOWNLOAD_RETRIES`` | ``5`` | attempts per download before giving up |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATASET = "ml-100k"
DEFAULT_PORT = 54329


def find_project_root(start: Path | None = None) -> Path:
    """Return the checkout's root: the nearest parent holding ``pyproject.toml``
    and ``dbt_project/``. Falls back to the current directory."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "dbt_project").is_dir():
            return candidate
    package_checkout = Path(__file__).resolve().parents[2]
    if (package_checkout / "dbt_project").is_dir():
        return package_checkout
    return here


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :meth:`from_env`."""

    home: Path
    warehouse_url: str | None = None
    warehouse_port: int | None = None
    pg_bin: Path | None = None
    dataset: str = DEFAULT_DATASET
    source: str | None = None
    source_sha256: str | None = None
    owner_role: str = "mfy_owner"
    reader_role: str = "mfy_reader"
    reader_password: str | None = field(default=None, repr=False)
    download_retries: int = 5

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        home = Path(get("MFY_HOME") or find_project_root() / ".mfy").resolve()
        port = get("MFY_WAREHOUSE_PORT")
        pg_bin = get("MFY_PG_BIN")
        retries = get("MFY_DOWNLOAD_RETRIES")
        return cls(
            home=home,
            warehouse_url=get("MFY_WAREHOUSE_URL"),
            warehouse_port=int(port) if port else None,
            pg_bin=Path(pg_bin) if pg_bin else None,
            dataset=get("MFY_DATASET") or DEFAULT_DATASET,
            source=get("MFY_SOURCE"),
            source_sha256=get("MFY_SOURCE_SHA256"),
            owner_role=get("MFY_OWNER_ROLE") or "mfy_owner",
            reader_role=get("MFY_READER_ROLE") or "mfy_reader",
            reader_password=get("MFY_READER_PASSWORD"),
            download_retries=int(retries) if retries else 5,
        )

    def to_env(self) -> dict[str, str]:
        """The ``MFY_*`` variables that :meth:`from_env` reads back as these settings,
        for a child process (spark-submit) that must see the same configuration."""
        values = {
            "MFY_HOME": self.home, "MFY_WAREHOUSE_URL": self.warehouse_url,
            "MFY_WAREHOUSE_PORT": self.warehouse_port, "MFY_PG_BIN": self.pg_bin,
            "MFY_DATASET": self.dataset, "MFY_SOURCE": self.source,
            "MFY_SOURCE_SHA256": self.source_sha256, "MFY_OWNER_ROLE": self.owner_role,
            "MFY_READER_ROLE": self.reader_role, "MFY_READER_PASSWORD": self.reader_password,
            "MFY_DOWNLOAD_RETRIES": self.download_retries,
        }
        return {name: str(value) for name, value in values.items() if value is not None}

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def is_embedded(self) -> bool:
        return self.warehouse_url is None
