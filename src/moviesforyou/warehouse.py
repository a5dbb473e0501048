"""The warehouse: a PostgreSQL database, embedded by default.

``MFY_WAREHOUSE_URL`` set
    that server is used as it is; the user in the URL is the pipeline's owner.
``MFY_WAREHOUSE_URL`` unset
    an embedded PostgreSQL cluster lives in ``$MFY_HOME/warehouse`` and listens
    on 127.0.0.1 only. It uses Debian's server binaries when they are installed
    and the binaries bundled in the ``pgserver`` wheel otherwise, so a fresh
    machine needs nothing but the locked environment. The cluster is reused
    across runs; ``start`` and ``bootstrap`` are safe to call any number of times.

:func:`bootstrap` creates the schemas and the two roles:

* the owner role (``mfy_owner``) owns every schema and is the role the
  pipeline connects as;
* the reader role (``mfy_reader``) may read the published schemas (marts,
  recs, ops, app) and nothing else. Dashboards and the API connect as it.
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
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from moviesforyou.config import DEFAULT_PORT, Settings
from moviesforyou.errors import WarehouseError

log = logging.getLogger(__name__)

DATABASE = "moviesforyou"
SUPERUSER = "postgres"
#: Schemas, in the order a reader meets them. dbt writes staging, intermediate and marts.
SCHEMAS = ("raw", "staging", "intermediate", "marts", "recs", "app", "ops",
           # the next recs version is built here, and the last few are kept here (publish.py)
           "recs_build", "recs_history")
#: Schemas the reader role may read.
READABLE_SCHEMAS = ("marts", "recs", "app", "ops")
#: Tables people write through the application; dbt reads them as sources.
_APP_DDL = """
create table if not exists app.users (
    user_id integer primary key,
    dataset text not null,
    gender text check (gender in ('M', 'F')),
    age integer check (age between 1 and 120),
    occupation text,
    zip_code text,
    preferred_genres text[] not null default '{}',
    created_at timestamptz not null default now()
);
comment on table app.users is
    'People who signed up through the API, beyond the release''s own users.';
create table if not exists app.ratings (
    app_rating_id bigserial primary key,
    dataset text not null,
    user_id integer not null,
    movie_id integer not null,
    rating numeric(2, 1) not null
        check (rating between 0.5 and 5 and rating * 2 = round(rating * 2)),
    rated_at timestamptz not null default now(),
    received_at timestamptz not null default now()
);
comment on table app.ratings is
    'Ratings submitted through the API; the next nightly dbt build adds them to marts.fct_ratings.';
create index if not exists ratings_received_at_idx on app.ratings (received_at);

-- The API connects as the read-only role; these two functions are its only way to
-- write. They run as the owner, check what they are given, and touch nothing else.
create or replace function app.sign_up(p_dataset text, p_age integer, p_gender text,
        p_occupation text, p_zip_code text, p_preferred_genres text[])
    returns integer language plpgsql security definer
    set search_path = pg_catalog, pg_temp as $fn$
declare
    new_id integer;
begin
    lock table app.users in exclusive mode;  -- one id at a time
    select greatest(
        coalesce((select max(user_id) from app.users), 0),
        case when to_regclass('marts.dim_users') is null then 0
             else coalesce((select max(user_id) from marts.dim_users), 0) end,
        case when to_regclass('raw.users') is null then 0
             else coalesce((select max(user_id) from raw.users where dataset = p_dataset), 0)
        end) + 1
        into new_id;
    insert into app.users (user_id, dataset, gender, age, occupation, zip_code, preferred_genres)
    values (new_id, p_dataset, p_gender, p_age, p_occupation, p_zip_code,
            coalesce(p_preferred_genres, '{}'));
    return new_id;
end
$fn$;
create or replace function app.submit_rating(p_dataset text, p_user_id integer,
        p_movie_id integer, p_rating numeric)
    returns bigint language sql security definer
    set search_path = pg_catalog, pg_temp as $fn$
    insert into app.ratings (dataset, user_id, movie_id, rating)
    values (p_dataset, p_user_id, p_movie_id, p_rating)
    returning app_rating_id
$fn$;
"""

#: Operational history the platform keeps beside MLflow.
_OPS_DDL = """
create table if not exists ops.model_promotions (
    promotion_id bigserial primary key,
    decided_at timestamptz not null default now(),
    model_name text not null,
    challenger_version text,
    champion_version_before text,
    champion_version_after text,
    promoted boolean not null,
    action text not null check (action in ('gate', 'rollback')),
    reason text not null,
    dataset text,
    snapshot_digest text,
    metrics jsonb not null default '{}'::jsonb,
    mlflow_run_id text
);
comment on table ops.model_promotions is
    'Every champion decision: gate outcomes and rollbacks, with the figures behind them.';
create table if not exists ops.publish_log (
    publish_id bigserial primary key,
    action text not null check (action in ('publish', 'rollback')),
    status text not null
        check (status in ('building', 'failed', 'live', 'archived', 'dropped')),
    dataset text not null,
    model_name text,
    model_version text,
    mlflow_run_id text,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    went_live_at timestamptz,
    row_counts jsonb not null default '{}'::jsonb,
    timings jsonb not null default '{}'::jsonb,
    validation jsonb,
    metrics jsonb not null default '{}'::jsonb,
    swap_lock_ms double precision,
    error text
);
create table if not exists ops.pipeline_runs (
    dag_id text not null,
    run_id text not null,
    logical_date timestamptz,
    dataset text not null,
    state text not null check (state in ('success', 'failed', 'skipped')),
    started_at timestamptz,
    finished_at timestamptz not null default now(),
    source_status text,
    trained boolean not null default false,
    promoted boolean,
    published boolean not null default false,
    model_version text,
    publish_id bigint,
    tasks jsonb not null default '{}'::jsonb,
    row_counts jsonb not null default '{}'::jsonb,
    metrics jsonb not null default '{}'::jsonb,
    note text,
    primary key (dag_id, run_id)
);
comment on table ops.pipeline_runs is
    'One row per nightly DAG run (re-runs overwrite it): each task''s state and seconds, '
    'row counts, model metrics, the model version and whether recommendations were published.';
alter table ops.pipeline_runs add column if not exists errors jsonb not null default '{}'::jsonb;
comment on column ops.pipeline_runs.errors is
    'Per failed task, the message of the exception that failed it.';
comment on column ops.pipeline_runs.note is
    'How the run ended, in a sentence: what is live now and why the run did what it did.';
create table if not exists ops.recs_quality (
    publish_id bigint primary key,
    model_version text,
    measured_at timestamptz not null default now(),
    users integer not null,
    recommendations bigint not null,
    catalogue_movies integer not null,
    recommended_movies integer not null,
    catalogue_coverage double precision not null,
    mean_popularity_percentile double precision,
    share_of_top_10pct double precision
);
comment on table ops.recs_quality is
    'Per publish: catalogue coverage of the published lists and their popularity bias '
    '(mean popularity percentile of recommended movies; share from the 10% most rated). '
    'Written by the recs_freshness DAG after each publish.';
create table if not exists ops.freshness_checks (
    check_id bigserial primary key,
    checked_at timestamptz not null default now(),
    dataset text not null,
    publish_id bigint,
    published_hours_ago double precision,
    ratings_through timestamptz,
    source_checked_hours_ago double precision,
    pending_app_ratings integer not null,
    max_age_hours double precision not null,
    is_fresh boolean not null
);
comment on table ops.freshness_checks is
    'Each freshness check of the served recommendations (recs_freshness DAG).';
create table if not exists ops.validations (
    validation_id bigserial primary key,
    validated_at timestamptz not null default now(),
    layer text not null,
    dataset text not null,
    schema_name text not null,
    subject text,
    success boolean not null,
    evaluated integer not null,
    failures jsonb not null default '[]'::jsonb,
    seconds double precision
);
comment on table ops.validations is
    'Every Great Expectations validation: layer, what it validated (subject: the raw load '
    'or the publish), the outcome and the failing expectations.';
-- flat views of the jsonb columns, for dashboards
create or replace view ops.model_metrics_by_run as
select r.run_id, r.finished_at, r.model_version, r.promoted, 'ALS (challenger)' as model,
       m.key as metric, m.value::float8 as value
from ops.pipeline_runs as r, jsonb_each_text(r.metrics -> 'model') as m
where r.trained
union all
select r.run_id, r.finished_at, r.model_version, r.promoted, b.key, m.key, m.value::float8
from ops.pipeline_runs as r, jsonb_each(r.metrics -> 'baselines') as b,
     jsonb_each_text(b.value) as m
where r.trained;
comment on view ops.model_metrics_by_run is
    'One row per run, model (the challenger or a baseline) and metric, from ops.pipeline_runs.';
create or replace view ops.freshness_latest as
select * from ops.freshness_checks order by checked_at desc limit 1;
comment on view ops.freshness_latest is 'The newest freshness check (one row).';
create or replace view ops.task_durations as
select r.run_id, r.finished_at, r.state as run_state, t.key as task_id,
       t.value ->> 'state' as state, (t.value ->> 'seconds')::float8 as seconds
from ops.pipeline_runs as r, jsonb_each(r.tasks) as t;
comment on view ops.task_durations is 'Seconds and state of each task of each nightly run.';
comment on table ops.publish_log is
    'Every publish of the recs tables and every rollback: model version, row counts, '
    'step timings, the Great Expectations result and how long the swap held its locks.';
"""

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


def _free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
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
        self.port = self.port or _free_port(DEFAULT_PORT)
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
            result = self._run(
                "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
                "-l", str(self.log_file),
            )
            if result.returncode != 0:
                tail = ""
                if self.log_file.exists():
                    tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
                raise WarehouseError(
                    f"the embedded PostgreSQL in {self.data_dir} did not start "
                    f"(port {self.port}):\n{result.stderr.strip()}\n{tail}"
                )
            log.info("started embedded PostgreSQL on 127.0.0.1:%s", self.port)
            return True

    def stop(self) -> bool:
        """Stop the server. Returns False when it was not running."""
        with self._lock():
            if not self.is_running():
                return False
            result = self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))
            if result.returncode != 0:
                raise WarehouseError(f"pg_ctl stop failed: {result.stderr.strip()}")
            return True

    def url(self, user: str = SUPERUSER, database: str = DATABASE) -> str:
        return f"postgresql://{quote(user)}@127.0.0.1:{self.port}/{quote(database)}"

    def version(self) -> str:
        return self._run("postgres", "--version").stdout.strip()


# --------------------------------------------------------------------------- access


def embedded(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.warehouse_dir, settings.warehouse_port, settings.pg_bin)


def url(settings: Settings, *, start: bool = True) -> str:
    """The owner's libpq URL; starts (and then bootstraps) the embedded server if it is down.

    Bootstrapping on every call would grant and comment on every table each
    time anything connects; commands call :func:`ensure` once when they begin.
    """
    if settings.warehouse_url:
        return settings.warehouse_url
    server = embedded(settings)
    if start and not server.is_running():
        ensure(settings)
    return server.url(user=settings.owner_role)


def reader_url(settings: Settings) -> str:
    """The same server and database, as the read-only role."""
    owner = urlsplit(url(settings))
    password = settings.reader_password
    userinfo = quote(settings.reader_role) + (f":{quote(password)}" if password else "")
    netloc = f"{userinfo}@{owner.hostname}" + (f":{owner.port}" if owner.port else "")
    return urlunsplit((owner.scheme, netloc, owner.path, owner.query, owner.fragment))


def redact(dsn: str) -> str:
    """The URL with its password replaced, for logs and the ledger."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


def connect(settings: Settings, *, dsn: str | None = None, **kwargs) -> Connection:
    """A psycopg2 connection to the warehouse (owner role unless ``dsn`` says otherwise)."""
    target = dsn or url(settings)
    try:
        return psycopg2.connect(target, application_name="moviesforyou", **kwargs)
    except psycopg2.OperationalError as exc:
        raise WarehouseError(f"cannot connect to {redact(target)}: {exc}".strip()) from exc


def ensure(settings: Settings) -> str:
    """Start (if embedded) and bootstrap the warehouse. Returns the owner URL."""
    if settings.warehouse_url:
        bootstrap(settings, admin_dsn=settings.warehouse_url)
        return settings.warehouse_url
    server = embedded(settings)
    server.start()
    bootstrap(settings, admin_dsn=server.url(database="postgres"))
    return server.url(user=settings.owner_role)


def bootstrap(settings: Settings, *, admin_dsn: str) -> None:
    """Create roles, database, schemas and grants. Safe to run any number of times.

    Args:
        settings: role names and the reader's password.
        admin_dsn: a connection able to create roles: the embedded superuser, or
            the configured server's user (which then acts as the owner).
    """
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            # one bootstrap at a time per server; held until this connection closes
            cur.execute("select pg_advisory_lock(hashtext('moviesforyou.bootstrap'))")
            _bootstrap_database(settings, cur, admin_dsn)
    finally:
        admin.close()


def _bootstrap_database(settings: Settings, cur, admin_dsn: str) -> None:
    """Roles and database (on the admin connection), then schemas, grants and tables."""
    owner, reader = settings.owner_role, settings.reader_role
    if settings.is_embedded:
        _ensure_role(cur, owner, login=True)
        cur.execute("select 1 from pg_database where datname = %s", (DATABASE,))
        if not cur.fetchone():
            cur.execute(sql.SQL("create database {} owner {}").format(
                sql.Identifier(DATABASE), sql.Identifier(owner)))
        target = embedded(settings).url(database=DATABASE)
    else:
        cur.execute("select current_user")
        owner = cur.fetchone()[0]
        target = admin_dsn
    try:
        if _ensure_role(cur, reader, login=True, password=settings.reader_password):
            # dashboards and the API must not hold the warehouse hostage
            cur.execute(sql.SQL("alter role {} set statement_timeout = '60s'")
                        .format(sql.Identifier(reader)))
    except psycopg2.errors.InsufficientPrivilege:
        log.warning("cannot create role %s on this server: ask a DBA to create it", reader)
        reader = None

    from moviesforyou import ingest  # the raw tables and the load ledger

    conn = psycopg2.connect(target)
    try:
        with conn, conn.cursor() as db:
            _create_schemas(db, owner, reader)
            _create_extension(db, "pg_trgm")  # fuzzy title search in the API
            db.execute(sql.SQL("set local role {}").format(sql.Identifier(owner)))
            ingest.create_tables(db)
            db.execute(_APP_DDL)
            db.execute(_OPS_DDL)
    finally:
        conn.close()


def _ensure_role(cur, name: str, *, login: bool, password: str | None = None) -> bool:
    """Create the role if missing. Returns True when this call created it."""
    cur.execute("select 1 from pg_roles where rolname = %s", (name,))
    created = cur.fetchone() is None
    if created:
        cur.execute(sql.SQL("create role {} {}").format(
            sql.Identifier(name), sql.SQL("login" if login else "nologin")))
    if password:
        cur.execute(sql.SQL("alter role {} password {}").format(
            sql.Identifier(name), sql.Literal(password)))
    return created


def _create_extension(cur, name: str) -> None:
    cur.execute("savepoint extension")
    try:
        cur.execute(sql.SQL("create extension if not exists {}").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege:
        cur.execute("rollback to savepoint extension")
        log.warning("cannot create extension %s: ask a DBA to run `create extension %s`",
                    name, name)


def _create_schemas(cur, owner: str, reader: str | None) -> None:
    o = sql.Identifier(owner)
    cur.execute("select current_database()")
    database = sql.Identifier(cur.fetchone()[0])
    for schema in SCHEMAS:
        s = sql.Identifier(schema)
        cur.execute(sql.SQL("create schema if not exists {} authorization {}").format(s, o))
    if reader is None:
        return
    r = sql.Identifier(reader)
    cur.execute(sql.SQL("grant connect on database {} to {}").format(database, r))
    for schema in READABLE_SCHEMAS:
        s = sql.Identifier(schema)
        cur.execute(sql.SQL("grant usage on schema {} to {}").format(s, r))
        cur.execute(sql.SQL("grant select on all tables in schema {} to {}").format(s, r))
        cur.execute(sql.SQL(
            "alter default privileges for role {} in schema {} grant select on tables to {}"
        ).format(o, s, r))
        cur.execute(sql.SQL(
            "alter default privileges for role {} in schema {} grant execute on functions to {}"
        ).format(o, s, r))


def describe(settings: Settings) -> dict[str, str]:
    """What the CLI's ``warehouse status`` prints."""
    if settings.warehouse_url:
        return {"mode": "external", "url": redact(settings.warehouse_url)}
    server = embedded(settings)
    return {
        "mode": "embedded",
        "directory": str(server.directory),
        "binaries": str(server.bin_dir),
        "version": server.version(),
        "running": "yes" if server.is_running() else "no",
        "url": server.url(user=settings.owner_role) if server.port else "(not initialised)",
    }


def psql_command(settings: Settings, dsn: str | None = None) -> list[str]:
    """argv for an interactive psql on the warehouse."""
    target = dsn or url(settings)
    exe = shutil.which("psql")
    if not settings.warehouse_url:
        bundled = embedded(settings).bin_dir / "psql"
        if bundled.exists():
            exe = str(bundled)
    if not exe:
        raise WarehouseError("psql not found: install postgresql-client")
    return [exe, target]
