"""Configuration: one settings tree, read from environment variables only.

Every setting has a sensible default so that a fresh checkout runs with none of
them set. Each entry point (the CLI, a DAG task, the API's start, the
spark-submit driver, a benchmark) builds :class:`Settings` once with
:meth:`Settings.from_env` and passes it down; this module is the only one that
reads ``MFY_*`` variables. :meth:`Settings.to_env` is the one way settings
leave a process (a child's environment), and reads back as the same settings.

:data:`VARIABLES` lists every variable, its place in the tree, its default and
what it means; ``.env.example`` lists them all too (``tests/test_config.py``
checks the two against each other).
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
    package_checkout = Path(__file__).resolve().parents[3]
    if (package_checkout / "dbt_project").is_dir():
        return package_checkout
    return here


class ConfigError(ValueError):
    """A variable's value cannot be used; the message names the variable."""


@dataclass(frozen=True)
class PublishSettings:
    """How the recommendations are published (``moviesforyou.publishing.publish``)."""

    n: int = 50
    similar_n: int = 20
    similar_min_ratings: int = 10
    similarity: str = "mixed+genres+tags"
    popular_n: int = 50
    keep: int = 3
    lock_timeout_ms: int = 200
    #: share of viewers served the challenger's lists (0: no experiment)
    challenger_share: float = 0.0


@dataclass(frozen=True)
class SparkSettings:
    """The Spark session (``spark_jobs.session``) and the cluster path of the DAG."""

    master: str | None = None
    driver_memory: str = "4g"
    shuffle_partitions: int | None = None
    checkpoint_dir: Path | None = None
    conn_id: str | None = None


@dataclass(frozen=True)
class TrainingSettings:
    """The registry and the nightly training rules (``spark_jobs``)."""

    model_name: str = "moviesforyou-als"
    tune_day: str = "sun"
    #: other nights: ``refresh`` the champion (re-solve the users with new ratings
    #: against its movie factors, ``spark_jobs.refresh``) or ``full`` re-fit it in Spark
    refit: str = "refresh"
    #: a refresh becomes a full re-fit past this share of ratings new since the champion
    refresh_max_new: float = 0.05
    #: ``MLFLOW_TRACKING_URI``; unset: a SQLite store under ``MFY_HOME/mlflow``
    mlflow_tracking_uri: str | None = None
    #: a run conf's ``train`` object (JSON) for runs whose conf has none, e.g. fixed
    #: grids on a server's scheduled runs (``spark_jobs.config.train_config``)
    train_conf: str | None = None


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API (``serving``)."""

    database_url: str | None = None
    pool_min: int = 2
    pool_max: int = 10
    cache_size: int = 50_000
    cache_ttl: float = 60.0
    cache_seconds: float = 1.0
    #: writes (sign-ups, rating posts) per token and per client address a minute
    write_limit: int = 30
    #: exposures a worker holds before they are written (0: no exposure log)
    exposure_buffer: int = 100_000
    exposure_flush_seconds: float = 1.0


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
    expectations_dir: Path | None = None
    max_recs_age_hours: float = 36.0
    #: weekday the nightly dbt build rebuilds every incremental model in full
    dbt_rebuild_day: str = "sat"
    #: the dbt profile's target (``dbt_project/profiles.yml``) and its threads
    dbt_target: str = "warehouse"
    dbt_threads: int = 4
    #: seconds a writing step waits for another writer before it fails
    writer_wait: float = 600.0
    #: days the exposure log (app.exposures) keeps what viewers were shown
    exposure_retention_days: int = 90
    publish: PublishSettings = field(default_factory=PublishSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    api: ApiSettings = field(default_factory=ApiSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default: this process's environment)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, dict] = {"": {}}
        for variable in VARIABLES:
            raw = env.get(variable.name, "").strip()
            if not raw:
                continue
            try:
                value = variable.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{variable.name}={raw!r}: {exc}") from None
            group, _, name = variable.field.rpartition(".")
            values.setdefault(group, {})[name] = value
        top = values.pop("")
        top["home"] = Path(top.get("home") or find_project_root() / ".mfy").resolve()
        for group, kind in _GROUPS.items():
            top[group] = kind(**values.get(group, {}))
        return cls(**top)

    def to_env(self) -> dict[str, str]:
        """The variables that :meth:`from_env` reads back as these settings, for a
        child process (dbt, airflow, spark-submit, the API) that must see the same."""
        out = {}
        for variable in VARIABLES:
            value = self.get(variable.field)
            if value is not None:
                out[variable.name] = str(value)
        return out

    def get(self, dotted: str):
        """A setting by its place in the tree, e.g. ``publish.n``."""
        value = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def is_embedded(self) -> bool:
        return self.warehouse_url is None

    @property
    def suites_dir(self) -> Path:
        """The Great Expectations suites (``expectations/``)."""
        return self.expectations_dir or find_project_root() / "expectations"


_GROUPS = {"publish": PublishSettings, "spark": SparkSettings, "training": TrainingSettings,
           "api": ApiSettings}

def _whole(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _weekday(text: str) -> str:
    day = text.lower()[:3]
    if day not in ("mon", "tue", "wed", "thu", "fri", "sat", "sun", "alw", "nev"):
        raise ValueError("expected a weekday (mon..sun), 'always' or 'never'")
    return day


def _refit(text: str) -> str:
    if text.lower() not in ("refresh", "full"):
        raise ValueError("expected refresh or full")
    return text.lower()


#: How similar movies can be found (``MFY_SIMILARITY``): a base on the ALS factors and
#: content signals added to it (see ``spark_jobs.score.similarity_model``).
SIMILARITY_BASES = ("cosine", "centred", "explicit", "mixed")
SIMILARITY_CONTENT = ("genres", "tags")


def similarity_parts(text: str) -> tuple[str, frozenset[str]]:
    """``mixed+genres+tags`` -> ("mixed", {"genres", "tags"}); ValueError if unknown."""
    base, *content = text.lower().split("+")
    if base not in SIMILARITY_BASES or not set(content) <= set(SIMILARITY_CONTENT) \
            or len(set(content)) < len(content):
        raise ValueError(f"unknown similarity {text!r}: expected cosine, centred, explicit "
                         "or mixed, optionally +genres and/or +tags")
    return base, frozenset(content)


def _similarity(text: str) -> str:
    similarity_parts(text)
    return text.lower()


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("expected a share between 0 and 1")
    return value


def _json_object(text: str) -> str:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object, like a run conf's \"train\"")
    return json.dumps(value, sort_keys=True)


def on_weekday(day: str, when) -> bool:
    """Whether a run at ``when`` falls on ``day`` (as :func:`_weekday` keeps it:
    ``mon``..``sun``, ``alw`` or ``nev``). A run without a date (a manual one)
    counts as the day."""
    if day in ("alw", "nev"):
        return day == "alw"
    return when is None or when.strftime("%a").lower()[:3] == day


@dataclass(frozen=True)
class Variable:
    """One environment variable: where it goes in :class:`Settings`, and what it means."""

    name: str
    field: str
    default: str
    doc: str
    parse: Callable[[str], object] = str


#: Every variable the platform reads, in the order ``.env.example`` lists them.
VARIABLES: tuple[Variable, ...] = (
    Variable("MFY_HOME", "home", "<project>/.mfy",
             "project-local state: embedded warehouse, downloads, MLflow store", Path),
    Variable("MFY_DATASET", "dataset", DEFAULT_DATASET, "the MovieLens release"),
    Variable("MFY_SOURCE", "source", "GroupLens URL",
             "URL, zip or folder to ingest instead of the GroupLens URL"),
    Variable("MFY_SOURCE_SHA256", "source_sha256", "unset", "pinned SHA-256 of the release zip"),
    Variable("MFY_DOWNLOAD_RETRIES", "download_retries", "5",
             "attempts per download before giving up", _whole(1)),
    Variable("MFY_WAREHOUSE_URL", "warehouse_url", "unset",
             "PostgreSQL URL of a real server; unset means the embedded one"),
    Variable("MFY_WAREHOUSE_PORT", "warehouse_port", "first free from 54329",
             "TCP port of the embedded server", _whole(1)),
    Variable("MFY_PG_BIN", "pg_bin", "auto",
             "folder with initdb/pg_ctl/postgres/psql for the embedded server", Path),
    Variable("MFY_OWNER_ROLE", "owner_role", "mfy_owner",
             "role that owns and writes the warehouse"),
    Variable("MFY_READER_ROLE", "reader_role", "mfy_reader",
             "read-only role for dashboards and the API"),
    Variable("MFY_READER_PASSWORD", "reader_password", "unset",
             "password given to the reader role when it is created"),
    Variable("MFY_EXPECTATIONS_DIR", "expectations_dir", "<project>/expectations",
             "folder of the Great Expectations suites", Path),
    Variable("MFY_MAX_RECS_AGE_HOURS", "max_recs_age_hours", "36",
             "the freshness check fails past this age of the live recommendations", _positive),
    Variable("MFY_WRITER_WAIT", "writer_wait", "600",
             "seconds a writing step (ingest, dbt build, publish) waits for another writer",
             _non_negative),
    Variable("MFY_DBT_REBUILD_DAY", "dbt_rebuild_day", "sat",
             "weekday the nightly dbt build rebuilds the models over fct_ratings in full, "
             "a day before the default MFY_TUNE_DAY (or always, never)", _weekday),
    Variable("MFY_DBT_TARGET", "dbt_target", "warehouse",
             "the target of dbt_project/profiles.yml that dbt runs against"),
    Variable("MFY_DBT_THREADS", "dbt_threads", "4", "threads dbt builds models with",
             _whole(1)),
    Variable("MFY_RECS_N", "publish.n", "50", "recommendations per user", _whole(1)),
    Variable("MFY_SIMILAR_N", "publish.similar_n", "20", "neighbours per movie", _whole(1)),
    Variable("MFY_SIMILAR_MIN_RATINGS", "publish.similar_min_ratings", "10",
             "ratings a movie needs to be offered as a neighbour (fewer on a small release: "
             "the count of its 100th most rated movie)", _whole(1)),
    Variable("MFY_SIMILARITY", "publish.similarity", "mixed+genres+tags",
             "how similar movies are found: cosine, centred, explicit or mixed, "
             "optionally +genres and +tags (see spark_jobs.score.similarity_model)",
             _similarity),
    Variable("MFY_POPULAR_N", "publish.popular_n", "50", "length of each cold-start list",
             _whole(1)),
    Variable("MFY_RECS_KEEP", "publish.keep", "3", "earlier publishes kept for rollback",
             _whole(0)),
    Variable("MFY_CHALLENGER_SHARE", "publish.challenger_share", "0",
             "share of viewers a publish serves the challenger's lists (0: no experiment; "
             "see moviesforyou models experiment)", _share),
    Variable("MFY_SWAP_LOCK_TIMEOUT_MS", "publish.lock_timeout_ms", "200",
             "lock wait per swap attempt, below deadlock_timeout (1 s)", _whole(1)),
    Variable("MFY_SPARK_MASTER", "spark.master", "local[*]", "Spark master URL"),
    Variable("MFY_SPARK_DRIVER_MEMORY", "spark.driver_memory", "4g", "Spark driver memory"),
    Variable("MFY_SPARK_SHUFFLE_PARTITIONS", "spark.shuffle_partitions", "2 x cores",
             "spark.sql.shuffle.partitions", _whole(1)),
    Variable("MFY_SPARK_CHECKPOINT_DIR", "spark.checkpoint_dir", "MFY_HOME/spark/checkpoints",
             "Spark checkpoints (ALS needs them past ~20 iterations)", Path),
    Variable("MFY_SPARK_CONN_ID", "spark.conn_id", "unset",
             "Airflow Spark connection: train_als goes through spark-submit", str),
    Variable("MFY_MODEL_NAME", "training.model_name", "moviesforyou-als",
             "the registered model in MLflow"),
    Variable("MFY_TUNE_DAY", "training.tune_day", "sun",
             "weekday the nightly run tunes the grids (or always, never)", _weekday),
    Variable("MFY_REFIT", "training.refit", "refresh",
             "other nights: refresh the champion's users (refresh) or re-fit in Spark (full)",
             _refit),
    Variable("MFY_REFRESH_MAX_NEW", "training.refresh_max_new", "0.05",
             "share of ratings new since the champion above which a night re-fits in full",
             _share),
    Variable("MFY_TRAIN_CONF", "training.train_conf", "unset",
             "training settings (JSON, as a run conf's \"train\") for runs whose conf has none",
             _json_object),
    Variable("MLFLOW_TRACKING_URI", "training.mlflow_tracking_uri", "SQLite under MFY_HOME",
             "MLflow tracking server (MLflow's own variable)"),
    Variable("MFY_API_DATABASE_URL", "api.database_url", "the reader's URL",
             "libpq URL the API reads with (the read-only role)"),
    Variable("MFY_API_POOL_MIN", "api.pool_min", "2", "connections per API worker, at least",
             _whole(0)),
    Variable("MFY_API_POOL_MAX", "api.pool_max", "10", "connections per API worker, at most",
             _whole(1)),
    Variable("MFY_API_CACHE_SIZE", "api.cache_size", "50000",
             "answers the API keeps per worker (0: no cache)", _whole(0)),
    Variable("MFY_API_CACHE_TTL", "api.cache_ttl", "60", "seconds a cached answer lives",
             _positive),
    Variable("MFY_API_CACHE_SECONDS", "api.cache_seconds", "1",
             "how often the API looks for a new publish", _positive),
    Variable("MFY_API_WRITE_LIMIT", "api.write_limit", "30",
             "sign-ups and rating posts per token and per client address a minute", _whole(1)),
    Variable("MFY_API_EXPOSURE_BUFFER", "api.exposure_buffer", "100000",
             "exposures a worker buffers before writing (0: no exposure log)", _whole(0)),
    Variable("MFY_API_EXPOSURE_FLUSH_SECONDS", "api.exposure_flush_seconds", "1",
             "how often the API writes its buffered exposures", _positive),
    Variable("MFY_EXPOSURE_RETENTION_DAYS", "exposure_retention_days", "90",
             "days app.exposures keeps what viewers were shown", _whole(1)),
)
