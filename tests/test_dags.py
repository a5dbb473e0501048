"""The Airflow DAGs' integrity: import, house rules, shape, nothing heavy at parse time.

Their end-to-end runs are in tests/test_nightly.py and tests/test_releases.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py"))


# --------------------------------------------------------------------------- integrity


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {Path(f).stem for f in DAG_FILES} == set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_dag_follows_the_house_rules(dagbag, dag_file):
    dag = dagbag.dags[dag_file.stem]  # the DAG id is the file name
    assert dag.tags and "moviesforyou" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200
    assert dag.catchup is False
    assert dag.start_date.tzinfo is not None
    assert dag.timetable.can_be_scheduled, "the DAG runs on a schedule"
    for task in dag.tasks:
        assert task.owner not in ("", "airflow"), task.task_id
        # retries: the DAG's default, or none where a retry cannot help (a failed gate)
        assert task.retries in (dag.default_args["retries"], 0), task.task_id
    assert dag.default_args["retries"] >= 1
    assert dag.default_args["retry_exponential_backoff"] is True


def test_nightly_dag_shape(dagbag):
    from moviesforyou.foundation import names

    dag = dagbag.dags["movielens_nightly"]
    assert dag.schedule == "30 2 * * *"
    assert sorted(t.task_id for t in dag.tasks) == sorted(names.NIGHTLY_TASKS)
    edges = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    assert edges == {
        ("extract_source", "validate_raw"), ("extract_source", "check_changes"),
        ("validate_raw", "check_changes"), ("check_changes", "build_marts"),
        ("build_marts", "validate_marts"), ("validate_marts", "export_snapshot"),
        ("export_snapshot", "train_als"), ("train_als", "gate_model"),
        ("export_snapshot", "gate_model"), ("gate_model", "score_recs"),
        ("score_recs", "validate_recs"), ("score_recs", "publish_recs"),
        ("validate_recs", "publish_recs"), ("publish_recs", "write_summary")}
    assert {"validate_recs", "score_recs"} == dag.get_task("publish_recs").upstream_task_ids
    assert dag.get_task("write_summary").trigger_rule == "all_done"
    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets}
    assert outlets == {"validate_raw": ["warehouse_raw"], "build_marts": ["warehouse_marts"],
                       "train_als": ["model_moviesforyou_als"],
                       "gate_model": ["model_moviesforyou_als"],
                       "publish_recs": ["warehouse_recs"]}


def test_follower_dag_is_data_aware(dagbag):
    dag = dagbag.dags["recs_freshness"]
    assert "warehouse_recs" in str(dag.timetable.asset_condition)


def _import_in_fresh_python(code: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_no_heavy_work_at_parse_time(dag_file):
    """The DAG file imports the step functions it names, but parsing it imports no
    Spark, MLflow, GX, dbt or pandas, and opens no database connection."""
    out = _import_in_fresh_python(
        "import runpy, sys, time, psycopg2; t = time.time(); "
        "opened = []; psycopg2.connect = lambda *a, **k: opened.append(a) or 1 / 0; "
        f"runpy.run_path({str(dag_file)!r}); "
        "heavy = [m for m in ('pyspark', 'mlflow', 'great_expectations', 'dbt', 'pandas'"
        ") if m in sys.modules] + ['a connection'] * len(opened); "
        "print(heavy, round(time.time() - t, 2))")
    heavy, seconds = out.strip().splitlines()[-1].rsplit(" ", 1)
    # what parsing imports, not how long it took (timing belongs in benchmarks; on a
    # loaded machine Airflow's own import alone can take 20 s)
    assert heavy == "[]", f"imported at parse time: {heavy}"
    print(f"{dag_file.name} parsed in {seconds} s")


def test_the_dag_names_the_functions_it_runs():
    """Every task of the nightly DAG calls a function the DAG file imports by name from
    the orchestration layer: no lookup by name at run time."""
    import ast

    source = (ROOT / "dags" / "movielens_nightly.py").read_text()
    tree = ast.parse(source)
    assert "importlib" not in source and "getattr(" not in source
    called = {f"{node.args[0].value.id}.{node.args[0].attr}" for node in ast.walk(tree)
              if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run"
              and isinstance(node.args[0], ast.Attribute)}
    from moviesforyou.foundation import names
    from moviesforyou.orchestration import pipeline, summary, training

    modules = {"pipeline": pipeline, "training": training, "summary": summary}
    for task in names.NIGHTLY_TASKS:
        where = [c for c in called if c.endswith(f".{task}")]
        assert len(where) == 1, (task, sorted(called))
        module, function = where[0].split(".")
        assert callable(getattr(modules[module], function))


def test_spark_connection_switches_training_to_spark_submit(airflow_db):
    out = _import_in_fresh_python(
        "from airflow.dag_processing.dagbag import DagBag; "
        "dag = DagBag(dag_folder='dags').dags['movielens_nightly']; "
        "t = dag.get_task('train_als'); "
        "print(type(t).__mro__[1].__name__, t._conn_id, t.application, "
        "      sorted(t.upstream_task_ids), sorted(t.downstream_task_ids))",
        env={"MFY_SPARK_CONN_ID": "spark_cluster"})
    kind, conn_id, application, upstream, downstream = out.strip().splitlines()[-1].split(" ", 4)
    assert kind == "SparkSubmitOperator" and conn_id == "spark_cluster"
    assert application.endswith("src/moviesforyou/orchestration/train_job.py")
    assert upstream == "['export_snapshot']" and downstream == "['gate_model']"
