"""The warehouse: a PostgreSQL database, embedded by default (the server itself:
:mod:`moviesforyou.foundation.embedded`).

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
import logging
import os
import shutil
import socket
import sys
import threading
import time
from importlib import resources
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.embedded import DATABASE, EmbeddedPostgres
from moviesforyou.foundation.errors import WarehouseBusy, WarehouseError

log = logging.getLogger(__name__)

#: Schemas, in the order a reader meets them. dbt writes staging, intermediate and marts.
SCHEMAS = ("raw", "staging", "intermediate", "marts", "recs", "app", "ops",
           # the next recs version is built here, and the last few are kept here (publish.py)
           "recs_build", "recs_history")
#: Schemas the reader role may read.
READABLE_SCHEMAS = ("marts", "recs", "app", "ops")

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


#: pg_advisory_lock key of the writer lock (hashtext of this text)
WRITER_LOCK = "moviesforyou.writer"
_held = threading.local()


def writer_name() -> str:
    """Who is writing: the Airflow task (from the variables Airflow sets for it) or
    the command line."""
    run_id, task = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"), os.environ.get(
        "AIRFLOW_CTX_TASK_ID")
    if run_id:
        return f"Airflow {os.environ.get('AIRFLOW_CTX_DAG_ID', 'DAG')} run {run_id} task {task}"
    return "command " + " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200]


@contextlib.contextmanager
def writer_lock(settings: Settings, action: str, *, wait: float | None = None):
    """Hold the warehouse's one writer lock while ``action`` writes; yields a connection.

    Every writing step takes it: ingest, the dbt build, publish and rollback. A
    second writer waits up to ``wait`` seconds (default ``MFY_WRITER_WAIT``) and
    then fails with :class:`WarehouseBusy` naming the holder: its DAG run and
    task or command, host, pid and since when. It is a session advisory lock, so
    a writer that dies releases it with its connection. A step already holding
    it in this thread (a publish's steps) takes it again for free.
    """
    conn = connect(settings)
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield conn
        finally:
            _held.depth -= 1
            conn.close()
        return
    wait = settings.writer_wait if wait is None else wait
    deadline, told = time.monotonic() + wait, False
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            while True:
                cur.execute("select pg_try_advisory_lock(hashtext(%s))", (WRITER_LOCK,))
                if cur.fetchone()[0]:
                    break
                holder = _writer(cur)
                if time.monotonic() >= deadline:
                    raise WarehouseBusy(f"{action}: the warehouse is being written by {holder}; "
                                        f"gave up after waiting {wait:g} s (MFY_WRITER_WAIT)")
                if not told:
                    log.info("%s waits for the warehouse's writer lock, held by %s", action,
                             holder)
                    told = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
            cur.execute(
                """insert into ops.writer (holder, host, pid) values (%s, %s, %s)
                   on conflict (only_row) do update
                   set holder = excluded.holder, host = excluded.host, pid = excluded.pid,
                       since = now()""",
                (f"{writer_name()} ({action})", socket.gethostname(), os.getpid()))
        conn.autocommit = False
        _held.depth = 1
        try:
            yield conn
        finally:
            _held.depth = 0
    finally:
        conn.close()  # releases the session lock


def _writer(cur) -> str:
    cur.execute("select holder, host, pid, since from ops.writer")
    row = cur.fetchone()
    if row is None:
        return "another writer"
    holder, host, pid, since = row
    return f"{holder} on {host}, pid {pid}, since {since:%Y-%m-%d %H:%M:%S %Z}"


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

    conn = psycopg2.connect(target)
    try:
        with conn, conn.cursor() as db:
            _create_schemas(db, owner, reader)
            _create_extension(db, "pg_trgm")  # fuzzy title search in the API
            db.execute(sql.SQL("set local role {}").format(sql.Identifier(owner)))
            for name in TABLE_FILES:
                db.execute(ddl(name))
            if reader is not None:
                _reader_writes_only_with_tokens(db, reader)
    finally:
        conn.close()


#: What the read-only role may run that writes: the app functions that check a token.
READER_WRITE_FUNCTIONS = ("app.sign_up_with_token(text, integer, text, text, text, text[], text)",)
OWNER_ONLY_FUNCTIONS = ("app.sign_up(text, integer, text, text, text, text[])",
                        "app.submit_rating(text, integer, integer, numeric)")


def _reader_writes_only_with_tokens(cur, reader: str) -> None:
    """The reader (the API's role) gets execute on sign-up only through the function
    that issues a token; the functions that write for any user are the owner's. It
    appends to the exposure log (``app.exposures``), and changes nothing there."""
    r = sql.Identifier(reader)
    cur.execute(sql.SQL("revoke select on app.tokens from {}").format(r))
    for function in OWNER_ONLY_FUNCTIONS:
        cur.execute(sql.SQL("revoke execute on function {} from {}").format(
            sql.SQL(function), r))
    for function in READER_WRITE_FUNCTIONS:
        cur.execute(sql.SQL("grant execute on function {} to {}").format(sql.SQL(function), r))
    cur.execute(sql.SQL("grant insert on app.exposures to {}").format(r))  # the log only


#: The warehouse's own tables, in the order they are created (``sql/<name>.sql``).
TABLE_FILES = ("raw", "ops", "app")


def ddl(name: str) -> str:
    """The SQL file ``src/moviesforyou/foundation/sql/<name>.sql``: the one place the warehouse's
    own DDL (raw, ops, app, the recs tables and functions) is read from (also from
    the zip a Spark job ships, hence importlib.resources)."""
    return resources.files("moviesforyou.foundation").joinpath("sql", f"{name}.sql").read_text()


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
