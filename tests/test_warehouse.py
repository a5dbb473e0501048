"""The embedded warehouse: lifecycle, roles, schemas, and the CLI around it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

from moviesforyou.foundation import embedded, warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import WarehouseError

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "moviesforyou.orchestration.cli"]


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env["MFY_HOME"] = str(settings.home)
    if settings.warehouse_port:
        env["MFY_WAREHOUSE_PORT"] = str(settings.warehouse_port)
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:  # say what the command said, not only its exit code
        log = warehouse.embedded(settings).log_file
        raise AssertionError(
            f"moviesforyou {' '.join(args)} exited {done.returncode}\nstdout:\n{done.stdout}"
            f"\nstderr:\n{done.stderr}\n{log}:\n"
            + (log.read_text()[-3000:] if log.exists() else "(none)"))
    return done


def test_schemas_and_roles(embedded_settings):
    conn = warehouse.connect(embedded_settings)
    with conn.cursor() as cur:
        cur.execute("select nspname, pg_get_userbyid(nspowner) from pg_namespace "
                    "where nspname = any(%s) order by 1", (list(warehouse.SCHEMAS),))
        assert cur.fetchall() == sorted((s, "mfy_owner") for s in warehouse.SCHEMAS)
        cur.execute("select rolname, rolsuper, rolcanlogin from pg_roles "
                    "where rolname like 'mfy_%%' order by 1")
        assert cur.fetchall() == [("mfy_owner", False, True), ("mfy_reader", False, True)]
        cur.execute("select current_user, current_database(), current_setting('TimeZone')")
        assert cur.fetchone() == ("mfy_owner", "moviesforyou", "UTC")
    conn.close()


def test_bootstrap_twice_is_harmless(embedded_settings):
    conn = warehouse.connect(embedded_settings)
    with conn, conn.cursor() as cur:
        cur.execute("create table if not exists marts.probe (x int)")
        cur.execute("insert into marts.probe values (1)")
    warehouse.ensure(embedded_settings)
    warehouse.ensure(embedded_settings)
    with conn, conn.cursor() as cur:
        cur.execute("select count(*) from marts.probe")
        assert cur.fetchone() == (1,)
        cur.execute("drop table marts.probe")
    conn.close()


def test_reader_reads_new_mart_tables_by_default(embedded_settings):
    conn = warehouse.connect(embedded_settings)
    with conn, conn.cursor() as cur:
        cur.execute("create table marts.new_after_bootstrap as select 42 as answer")
    reader = psycopg2.connect(warehouse.reader_url(embedded_settings))
    try:
        with reader.cursor() as cur:
            cur.execute("select answer from marts.new_after_bootstrap")
            assert cur.fetchone() == (42,)
            cur.execute("show statement_timeout")
            assert cur.fetchone() == ("1min",)
        reader.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), reader.cursor() as cur:
            cur.execute("create table marts.nope (x int)")
    finally:
        reader.close()
        with conn, conn.cursor() as cur:
            cur.execute("drop table marts.new_after_bootstrap")
        conn.close()


def test_lifecycle_from_nothing_via_cli():
    """A new MFY_HOME: `url` starts and bootstraps, `stop` stops, `url` starts again."""
    home = Path(tempfile.mkdtemp(prefix="mfy-cli-"))
    home.chmod(0o755)
    settings = Settings(home=home, warehouse_port=embedded.free_port(26432))
    try:
        first = cli(settings, "warehouse", "url")
        url = first.stdout.strip().splitlines()[-1]
        assert url == f"postgresql://mfy_owner@127.0.0.1:{settings.warehouse_port}/moviesforyou"
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("select count(*) from pg_namespace where nspname = 'recs'")
            assert cur.fetchone() == (1,)
        assert "running: yes" in cli(settings, "warehouse", "status").stdout
        assert "stopped" in cli(settings, "warehouse", "stop").stderr
        assert "not running" in cli(settings, "warehouse", "stop").stderr
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(url, connect_timeout=3)
        again = cli(settings, "warehouse", "url").stdout.strip().splitlines()[-1]
        assert again == url  # same port, same cluster, data kept
        psql = cli(settings, "warehouse", "psql", "-tAc", "select current_user")
        assert psql.stdout.strip() == "mfy_owner"
        reader = cli(settings, "warehouse", "url", "--reader").stdout.strip().splitlines()[-1]
        assert reader.startswith("postgresql://mfy_reader@127.0.0.1:")
    finally:
        cli(settings, "warehouse", "stop", check=False)
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_a_home_whose_port_was_taken_starts_on_a_free_one():
    """Another program took the port a home's warehouse recorded: the next start moves
    to a free port and records it, so every command of that home works again. A port
    the user pinned (MFY_WAREHOUSE_PORT) is not moved: the error names it, and a free
    one is where it starts."""
    import socket

    home = Path(tempfile.mkdtemp(prefix="mfy-port-"))
    home.chmod(0o755)
    try:
        server = embedded.EmbeddedPostgres(home / "warehouse")
        server.start()
        first = server.port
        server.stop()
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", first))
            squatter.listen()
            again = embedded.EmbeddedPostgres(home / "warehouse")
            assert again.start()
            assert again.port != first
            with psycopg2.connect(again.url(database="postgres"), connect_timeout=5) as conn, \
                    conn.cursor() as cur:
                cur.execute("show port")
                assert cur.fetchone() == (str(again.port),)
            # recorded: the next command of this home finds it there
            assert embedded.EmbeddedPostgres(home / "warehouse").port == again.port
            again.stop()
            # a free port asked for starts it there (not on its postgresql.conf's), and
            # is recorded for the home's next command
            asked = embedded.free_port(again.port + 7)
            pinned = embedded.EmbeddedPostgres(home / "warehouse", port=asked)
            assert pinned.start()
            with psycopg2.connect(pinned.url(database="postgres"), connect_timeout=5) as conn, \
                    conn.cursor() as cur:
                cur.execute("show port")
                assert cur.fetchone() == (str(asked),)
            assert embedded.EmbeddedPostgres(home / "warehouse").port == asked
            pinned.stop()
            with pytest.raises(WarehouseError, match=f"port {first} .*is taken"):
                embedded.EmbeddedPostgres(home / "warehouse", port=first).start()
    finally:
        embedded.EmbeddedPostgres(home / "warehouse").stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_status_of_a_warehouse_never_started(tmp_path):
    settings = Settings(home=tmp_path / "never", warehouse_port=embedded.free_port(27432))

    result = cli(settings, "warehouse", "status")

    assert "running: no" in result.stdout
    assert f"url: postgresql://mfy_owner@127.0.0.1:{settings.warehouse_port}/" in result.stdout
    assert not (tmp_path / "never").exists()  # looking creates nothing


def test_pgserver_binaries_are_found_without_debian(monkeypatch):
    """A fresh machine without Debian's postgresql uses the wheel's bundled server."""
    monkeypatch.setattr(embedded.Path, "glob", lambda self, pattern: iter(()))
    found = embedded.find_pg_bin()
    assert found.parts[-3:] == ("pgserver", "pginstall", "bin")
    assert (found / "initdb").exists()


def test_external_url_is_used_as_is(embedded_settings):
    server = warehouse.embedded(embedded_settings)
    settings = Settings(home=embedded_settings.home, warehouse_url=server.url("mfy_owner"))
    assert warehouse.url(settings) == server.url("mfy_owner")
    assert warehouse.describe(settings)["mode"] == "external"
    assert warehouse.redact("postgresql://u:secret@h:5432/d") == "postgresql://u:***@h:5432/d"


def test_cli_error_is_one_clear_line(embedded_settings, tmp_path):
    result = cli(embedded_settings, "ingest", "--dataset", "ml-1m", "--source",
                 str(tmp_path / "nowhere.zip"), check=False)
    assert result.returncode == 1
    assert f"error: {tmp_path / 'nowhere.zip'}: no such file" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_great_expectations_then_pyspark_imports():
    """pyspark 4 can exit silently with status 0 after GX is imported (without its
    connect extras, which the lock has)."""
    code = "import great_expectations; import pyspark; print('both imported', pyspark.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("both imported 4.")


def test_settings_survive_the_trip_through_a_child_environment(tmp_path):
    settings = Settings(home=tmp_path, warehouse_url="postgresql://u@h:5/d", dataset="ml-1m",
                        source="/data/ml-1m.zip", reader_password="s3cret", download_retries=2)
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env(Settings(home=tmp_path).to_env()) == Settings(home=tmp_path)


def test_raw_tables_have_the_parsers_columns(embedded_settings):
    """sql/raw.sql (the DDL) and formats.RAW_TABLES (what the parsers write) agree."""
    from moviesforyou.ingestion.formats import RAW_TABLES

    conn = warehouse.connect(embedded_settings)
    try:
        with conn.cursor() as cur:
            cur.execute("""select table_name, array_agg(column_name::text order by ordinal_position)
                           from information_schema.columns
                           where table_schema = 'raw' and table_name = any(%s)
                           group by table_name""", (list(RAW_TABLES),))
            found = dict(cur.fetchall())
    finally:
        conn.close()
    assert found == {table: ["dataset", *(name for name, _ in columns), "load_id", "loaded_at"]
                     for table, columns in RAW_TABLES.items()}


HOLD_WRITER = """
import sys, time
from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import WarehouseError
with warehouse.writer_lock(Settings.from_env(), sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_writer(settings: Settings, action: str) -> subprocess.Popen:
    """Another process that takes the writer lock and keeps it until killed."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MFY_", "AIRFLOW_CTX_"))}
    env.update(settings.to_env())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, action], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_one_writer_at_a_time_and_the_second_names_the_first(db_settings):
    from moviesforyou.foundation.errors import WarehouseBusy
    from moviesforyou.transformation import transform

    holder = hold_writer(db_settings, "ingest")
    try:
        # a dbt build and a rollback fail after their wait, naming the holder
        with pytest.raises(WarehouseBusy) as caught:
            transform.transform(dataclasses.replace(db_settings, writer_wait=1.0), docs=False)
        message = str(caught.value)
        assert message.startswith("dbt build: the warehouse is being written by command -c "
                                  "ingest (ingest) on ")
        assert f"pid {holder.pid}, since " in message and "after waiting 1 s" in message
        with (pytest.raises(WarehouseBusy, match=f"rollback: .* pid {holder.pid}"),
              warehouse.writer_lock(db_settings, "rollback", wait=0)):
            pass
    finally:
        holder.kill()
        holder.wait()
    # a writer that died released the lock with its connection: the next one proceeds
    with warehouse.writer_lock(db_settings, "rollback", wait=10) as conn, conn.cursor() as cur:
        cur.execute("select holder, pid from ops.writer")
        assert cur.fetchone() == (f"{warehouse.writer_name()} (rollback)", os.getpid())


def test_a_waiting_writer_proceeds_when_the_first_finishes(db_settings):
    holder = hold_writer(db_settings, "publish")
    subprocess.Popen(["sh", "-c", f"sleep 2; kill {holder.pid}"])
    started = time.monotonic()
    try:
        with warehouse.writer_lock(db_settings, "ingest", wait=60):
            assert time.monotonic() - started >= 1.5  # it waited for the first to end
            assert holder.wait(timeout=5) is not None
    finally:
        holder.kill()
        holder.wait()
