"""The nightly DAG end to end on the real ml-100k: ``dag.test()`` runs in order on one
warehouse, a spark-submit run, a backfill's plan, and the console's account of a
failed run. A real backfill through the scheduler runs in test_stack.py, on the
compose services."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pendulum
import pytest

from conftest import QUICK_TRAIN, ROOT, execute, fresh_database, query, temporary_environment
from moviesforyou.foundation import embedded, warehouse

#: The logical date of the first run and of its re-run.
LOGICAL_DATE = pendulum.datetime(2026, 11, 20, 2, 30, tz="UTC")


# --------------------------------------------------------------------------- end to end


@dataclasses.dataclass
class Nightly:
    settings: object
    dag: object
    env: dict

    def run(self, conf: dict | None = None, logical_date=None):
        with temporary_environment(self.env):
            return self.dag.test(run_conf=conf, logical_date=logical_date)

    @staticmethod
    def states(run) -> dict[str, str]:
        return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def nightly(dagbag, embedded_settings, ml100k, spark):
    """A fresh warehouse, MLflow store and Airflow configuration for the DAG runs."""
    home = Path(tempfile.mkdtemp(prefix="mfy-nightly-"))
    home.chmod(0o755)
    with fresh_database(embedded_settings) as settings:
        settings = dataclasses.replace(settings, home=home)
        env = {"MFY_HOME": str(home),
               # the conventional way: an Airflow connection and variables from the environment
               "AIRFLOW_CONN_MFY_WAREHOUSE": settings.warehouse_url,
               "AIRFLOW_VAR_MFY_DATASET": "ml-100k",
               "AIRFLOW_VAR_MFY_SOURCE": str(ml100k)}
        dag = dagbag.dags["movielens_nightly"]
        for task in dag.tasks:  # a failure should fail the test now, not after back-off
            task.retries = 0
        yield Nightly(settings, dag, env)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def wh(nightly):
    connection = warehouse.connect(nightly.settings)
    yield connection
    connection.close()


def champion_version(settings) -> str | None:
    from mlflow.exceptions import MlflowException

    from spark_jobs import registry

    client = registry.configure(settings)
    with contextlib.suppress(MlflowException):
        champion = client.get_model_version_by_alias(registry.model_name(settings), "champion")
        return str(champion.version)
    return None


def live(connection) -> tuple:
    return query(connection, "select publish_id, model_version from recs.publication")[0]


def summary(connection, run) -> dict:
    rows = query(connection, """select state, source_status, trained, promoted, published,
                                       model_version, publish_id, tasks, note, metrics
                                from ops.pipeline_runs where run_id = %s""", (run.run_id,))
    assert len(rows) == 1
    keys = ("state", "source_status", "trained", "promoted", "published", "model_version",
            "publish_id", "tasks", "note", "metrics")
    return dict(zip(keys, rows[0], strict=True))


@pytest.mark.integration
@pytest.mark.spark
@pytest.mark.slow
class TestNightlyRuns:
    """Runs in order on one warehouse: first run, unchanged re-run, corrupt source,
    a worse model, new app ratings."""

    def test_first_run_builds_trains_publishes_and_summarises(self, nightly, wh):
        run = nightly.run({"train": QUICK_TRAIN}, logical_date=LOGICAL_DATE)
        assert run.state == "success", nightly.states(run)
        assert set(nightly.states(run).values()) == {"success"}
        # 1,682 entries are 1,663 films; 307 viewers rated one under both of its ids
        assert query(wh, "select count(*) from marts.dim_movies") == [(1663,)]
        assert query(wh, "select count(*) from marts.fct_ratings") == [(99_693,)]
        champion = champion_version(nightly.settings)
        assert champion is not None
        assert live(wh)[1] == champion
        assert query(wh, "select count(*) from recs.user_recommendations") == [(943 * 50,)]
        row = summary(wh, run)
        assert row["state"] == "success" and row["source_status"] == "loaded"
        assert row["trained"] and row["promoted"] and row["published"]
        assert row["model_version"] == champion and row["publish_id"] == live(wh)[0]
        assert len(row["tasks"]) == 11  # every task but the summary itself
        assert all(t["seconds"] is not None for t in row["tasks"].values())
        # the Data Docs site the README points to
        assert (nightly.settings.home / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"
                / "index.html").exists()

    def test_follower_measures_the_published_recommendations(self, nightly, dagbag, wh):
        follower = Nightly(nightly.settings, dagbag.dags["recs_freshness"], nightly.env)
        for task in follower.dag.tasks:
            task.retries = 0
        run = follower.run()
        assert run.state == "success", follower.states(run)
        (pid, coverage, percentile, top), = query(wh, """
            select publish_id, catalogue_coverage, mean_popularity_percentile,
                   share_of_top_10pct from ops.recs_quality""")
        assert pid == live(wh)[0]
        assert 0 < coverage <= 1 and 0 < percentile < 1 and 0 <= top <= 1
        (fresh, pending), = query(wh, "select is_fresh, pending_app_ratings "
                                      "from ops.freshness_checks")
        assert fresh is True and pending == 0

    def test_rerun_of_the_same_date_is_idempotent_and_skips_visibly(self, nightly, wh):
        before = live(wh)
        versions_before = query(wh, "select count(*) from ops.model_promotions")
        validations_before = query(wh, "select count(*) from ops.validations")
        run = nightly.run(logical_date=LOGICAL_DATE)
        assert run.logical_date == LOGICAL_DATE
        states = nightly.states(run)
        assert run.state == "success"
        for name in ("build_marts", "train_als", "gate_model", "score_recs", "publish_recs"):
            assert states[name] == "skipped", name
        assert live(wh) == before
        assert query(wh, "select count(*) from ops.model_promotions") == versions_before
        # the unchanged load passed the raw suites before: not validated again
        assert query(wh, "select count(*) from ops.validations") == validations_before
        row = summary(wh, run)
        assert row["state"] == "skipped" and not row["trained"] and not row["published"]
        assert "training and publishing skipped" in row["note"]
        assert row["model_version"] == before[1]

    def test_corrupt_source_fails_at_the_raw_gate(self, nightly, wh, ml100k, tmp_path, capfd):
        before = live(wh)
        corrupt = tmp_path / "ml-100k-corrupt"
        corrupt.mkdir()
        for name in ("u.item", "u.data", "u.genre", "u.occupation"):
            shutil.copy(ml100k / name, corrupt / name)
        # every line parses (the parser checks ids, genders, stars and times), but two
        # users' ages are impossible, which only the raw suite looks at
        users = (ml100k / "u.user").read_text(encoding="latin-1").splitlines()
        for index, age in ((0, "0"), (1, "212")):
            fields = users[index].split("|")
            users[index] = "|".join([fields[0], age, *fields[2:]])
        (corrupt / "u.user").write_text("\n".join(users) + "\n", encoding="latin-1")
        nightly.env["AIRFLOW_VAR_MFY_SOURCE"] = str(corrupt)
        try:
            run = nightly.run({"train": QUICK_TRAIN})
        finally:
            nightly.env["AIRFLOW_VAR_MFY_SOURCE"] = str(ml100k)
        states = nightly.states(run)
        assert run.state == "failed"
        assert states["extract_source"] == "success" and states["validate_raw"] == "failed"
        assert states["publish_recs"] == "upstream_failed"
        assert states["write_summary"] == "failed"  # it writes the row, then fails the run
        log = capfd.readouterr()
        text = log.out + log.err
        assert "raw_staging__ml_100k.users: a plausible age" in text
        assert "kept for inspection in schema raw_rejected__ml_100k" in text
        assert live(wh) == before
        assert summary(wh, run)["state"] == "failed"
        (success, failures), = query(wh, """select success, failures from ops.validations
                                            where layer = 'raw'
                                            order by validation_id desc limit 1""")
        assert success is False
        assert [(f["table"], f["expectation"]) for f in failures] == [
            ("raw_staging__ml_100k.users", "expect_column_values_to_be_between")]
        assert failures[0]["observed"] == "2"  # two users

    def test_a_worse_model_keeps_the_champion_and_its_recommendations(self, nightly, wh):
        champion = champion_version(nightly.settings)
        worse = {"explicit": {"rank": 30, "reg_param": 0.001, "max_iter": 5},
                 "implicit": {"rank": 1, "reg_param": 5.0, "max_iter": 1, "alpha": 1.0},
                 "holdout_per_user": QUICK_TRAIN["holdout_per_user"]}
        run = nightly.run({"force": True, "train": worse})
        assert run.state == "success", nightly.states(run)
        assert champion_version(nightly.settings) == champion
        row = summary(wh, run)
        assert row["trained"] and row["promoted"] is False and row["published"]
        assert live(wh)[1] == champion  # re-scored, still the champion's recommendations
        (gate, reason), = query(wh, """select promoted, reason from ops.model_promotions
                                      order by promotion_id desc limit 1""")
        assert gate is False and "ranks no better" in reason

    def test_new_app_ratings_reach_fct_ratings(self, nightly, wh):
        rated = {m for (m,) in query(wh, "select movie_id from marts.fct_ratings "
                                         "where user_id = 1")}
        new = [m for m in range(1, 1683) if m not in rated][:3]
        for movie in new:
            execute(wh, "select app.submit_rating('ml-100k', 1, %s, 4.5)", (movie,))
        champion = champion_version(nightly.settings)
        lists = "select user_id, rank, movie_id from recs.user_recommendations order by 1, 2"
        before = query(wh, lists)
        # a night without tuning: the champion is refreshed, not re-fit in Spark
        run = nightly.run({"train": {"tune": False}})
        assert run.state == "success", nightly.states(run)
        row = summary(wh, run)
        assert "3 new app rating(s)" in row["note"] and row["trained"] and row["published"]
        assert row["promoted"] and row["model_version"] != champion
        assert row["metrics"]["model"]["forward_ratings"] == 3
        (reason,), = query(wh, """select reason from ops.model_promotions
                                  order by promotion_id desc limit 1""")
        assert reason.startswith(f"refresh of champion v{champion}: its movie factors with "
                                 "the users of 3 new rating(s) re-solved")
        # its publish scored only user 1; every other list is the live one, now served
        # as the refreshed version's
        (counts,), = query(wh, "select row_counts from ops.publish_log "
                               "where publish_id = %s", (row["publish_id"],))
        assert counts["users_scored"] == 1 and counts["user_recommendations"] == 943 * 50
        after = query(wh, lists)
        assert [r for r in after if r[0] != 1] == [r for r in before if r[0] != 1]
        assert [r for r in after if r[0] == 1] != [r for r in before if r[0] == 1]
        assert query(wh, "select distinct model_version from recs.user_recommendations") == [
            (row["model_version"],)]
        got = query(wh, """select movie_id from marts.fct_ratings
                           where user_id = 1 and rating_source = 'app' order by movie_id""")
        # the first is 268, Chasing Amy's second id: it counts for the film's kept id, 246
        film = dict(query(wh, "select movie_id, canonical_movie_id "
                              "from intermediate.int_movie_merges"))
        assert new[0] == 268 and film[268] == 246
        assert [m for (m,) in got] == sorted(film.get(m, m) for m in new)
        # the published list no longer offers them
        offered = query(wh, "select count(*) from recs.user_recommendations "
                            "where user_id = 1 and movie_id = any(%s)", (new,))
        assert offered == [(0,)]

    def test_training_through_spark_submit(self, nightly, wh, capfd, spark_cluster):
        """The cluster path for real: the Spark provider's operator runs spark-submit against
        a standalone cluster (its own master and worker JVMs); the executors' Python lacks
        the project, so they import it from the archive shipped with the job. The gate
        follows; scoring is submitted the same way, and the publish builds from what it
        wrote to shared storage."""
        from airflow.dag_processing.dagbag import DagBag

        host, port = spark_cluster.master.rsplit(":", 1)
        env = {**nightly.env, "MFY_SPARK_CONN_ID": "mfy_spark",
               "AIRFLOW_CONN_MFY_SPARK": json.dumps(
                   {"conn_type": "spark", "host": host, "port": int(port)}),
               "PYSPARK_PYTHON": str(spark_cluster.python), "SPARK_LOCAL_IP": "127.0.0.1",
               # spark-submit is this environment's
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        with temporary_environment(env):
            dag = DagBag(dag_folder=str(ROOT / "dags" / "movielens_nightly.py")).dags[
                "movielens_nightly"]
        assert type(dag.get_task("train_als")).__name__ == "TrainOnSpark"
        for task in dag.tasks:
            task.retries = 0
        before = int(champion_version(nightly.settings))
        apps_before = set(spark_cluster.work.glob("app-*"))
        run = Nightly(nightly.settings, dag, env).run({"force": True, "train": QUICK_TRAIN})
        assert run.state == "success", Nightly.states(run)
        out = capfd.readouterr()
        printed = out.out + out.err
        assert f"--master {spark_cluster.master}" in printed and "--py-files" in printed
        # training and scoring both went to the cluster, each with the code shipped
        assert "--name moviesforyou-train" in printed and "--name moviesforyou-score" in printed
        where = re.findall(r"executors import spark_jobs from (\S+)", printed)
        assert len(where) == 2, where
        assert all(w.endswith("moviesforyou-code.zip/spark_jobs/__init__.py") for w in where)
        # both applications ran on the worker: their executors' folders hold the archive
        apps = set(spark_cluster.work.glob("app-*")) - apps_before
        assert len(apps) == 2 and all(list(app.glob("*/moviesforyou-code.zip")) for app in apps)
        row = summary(wh, run)
        assert row["trained"] and row["published"]
        (version,), = query(wh, """select challenger_version from ops.model_promotions
                                  order by promotion_id desc limit 1""")
        assert int(version) > before  # a new version, registered by the spark-submit driver
        metrics = query(wh, "select metrics from ops.pipeline_runs where run_id = %s",
                        (run.run_id,))[0][0]
        assert metrics["model"]["ndcg_at_10"] > 0 and "most popular" in metrics["baselines"]
        assert live(wh)[1] == champion_version(nightly.settings)


def test_run_summary_is_one_row_per_run(published):
    """Re-running a run (same run id, e.g. cleared in the UI) replaces its summary row."""
    from moviesforyou.orchestration import summary

    tasks = {"extract_source": {"state": "success", "seconds": 1.0}}
    for state in ("failed", "success"):
        summary.write_summary(published, dag_id="movielens_nightly", run_id="scheduled__x",
                               logical_date=LOGICAL_DATE, started_at=LOGICAL_DATE, tasks=tasks,
                               results={"extract_source": {"status": "unchanged"}},
                               state=state)
    connection = warehouse.connect(published)
    try:
        rows = query(connection, "select state, model_version from ops.pipeline_runs "
                                 "where run_id = 'scheduled__x'")
        live_version = query(connection, "select model_version from recs.publication")[0][0]
        execute(connection, "delete from ops.pipeline_runs where run_id = 'scheduled__x'")
    finally:
        connection.close()
    assert rows == [("success", live_version)]


def test_backfill_plans_one_run_per_night(airflow_db):
    """catchup is off, but a backfill of past nights is planned run by run."""
    airflow = str(Path(sys.executable).parent / "airflow")
    done = subprocess.run([airflow, "dags", "reserialize"], capture_output=True, text=True,
                          env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([airflow, "backfill", "create", "--dag-id", "movielens_nightly",
                           "--from-date", "2026-11-01", "--to-date", "2026-11-04", "--dry-run"],
                          capture_output=True, text=True, env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = re.findall(r"\| (2026-11-\d\d 02:30:00\+00:00) \|", done.stdout)
    assert planned == ["2026-11-01 02:30:00+00:00", "2026-11-02 02:30:00+00:00",
                       "2026-11-03 02:30:00+00:00"]


@pytest.mark.integration
def test_console_run_of_an_unreachable_source_fails_at_once_and_says_why(embedded_settings,
                                                                         tmp_path):
    """`moviesforyou run` offline: the first try fails the task (no Airflow retries), the
    console says "failed" and prints the SourceError, and the run's row keeps it."""
    closed = embedded.free_port(19900)  # nothing listens there
    with fresh_database(embedded_settings) as settings:
        env = {**{k: v for k, v in os.environ.items()
                  if not k.startswith(("MFY_", "AIRFLOW_HOME", "MLFLOW_"))},
               "MFY_HOME": str(tmp_path / "home"), "MFY_WAREHOUSE_URL": settings.warehouse_url,
               "MFY_DOWNLOAD_RETRIES": "2", "COLUMNS": "400"}
        done = subprocess.run(
            [sys.executable, "-m", "moviesforyou.orchestration.cli", "run",
             "--source", f"http://127.0.0.1:{closed}/ml-100k.zip"],
            env=env, capture_output=True, text=True, timeout=600)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out
        assert "extract_source failed" in out and "extract_source done" not in out, out
        assert "SourceError: http://127.0.0.1" in out and "unreachable after 2 attempts" in out
        assert "nothing is published yet" in out
        log = (tmp_path / "home" / "airflow" / "last_run.log").read_text()
        assert log.count("starting task_id=extract_source") == 1  # no retry
        connection = warehouse.connect(settings)
        try:
            (state, errors, note), = query(connection, "select state, errors, note "
                                                       "from ops.pipeline_runs")
        finally:
            connection.close()
    assert state == "failed" and set(errors) == {"extract_source"}
    assert "unreachable after 2 attempts" in errors["extract_source"]
    assert note.startswith("failed at extract_source: SourceError: ")
