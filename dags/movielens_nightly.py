"""
### MovieLens nightly

Pulls the MovieLens release, validates it, models it, trains and gates the ALS
models, and publishes fresh recommendations, every night at 02:30 UTC.

| # | task | what it does | stops the run when |
|---|---|---|---|
| 1 | `extract_source` | downloads the release only if its checksum changed and writes it into its staging schema beside `raw` (not live yet) | the source is unreadable or a line is malformed |
| 2 | `validate_raw` | Great Expectations suite `raw` on the staged load, then swaps it in for the live release (write-audit-publish) | an expectation fails: the load is kept in `raw_rejected__<dataset>`, the live release stays |
| 3 | `check_changes` | nothing new (same release, no app ratings)? then skip 4-11 | - |
| 4 | `build_marts` | `dbt build` of the star schema and marts, with dbt's tests | a model or test fails |
| 5 | `validate_marts` | Great Expectations suite `marts` | an expectation fails |
| 6 | `export_snapshot` | `marts.fct_ratings` to Parquet, with its digest | - |
| 7 | `train_als` | tunes and registers a challenger in MLflow (Spark) | training fails |
| 8 | `gate_model` | moves `champion` only if the challenger is better | - |
| 9 | `score_recs` | scores the champion, builds the `recs` tables beside the live ones | - |
| 10 | `validate_recs` | Great Expectations suite `recs` on the build | an expectation fails |
| 11 | `publish_recs` | swaps the build in, atomically | - |
| 12 | `write_summary` | one row in `ops.pipeline_runs`, whatever happened | an earlier task failed |

Each task calls one named function: `moviesforyou.orchestration.pipeline.<task id>`,
or `moviesforyou.orchestration.training.train_als` / `gate_model`, through
`moviesforyou.orchestration.tasks.run` (settings from the Airflow connections and
variables; a failure's message kept for the summary).

The live recommendations change only in step 11, so any failure leaves them as
they were. A worse challenger stays a challenger: the champion's recommendations
are re-scored and published.

**Why one dbt task**: `dbt build` already runs every model with its tests right
after it, in dependency order, and stops downstream models on a failure; a task
per model (astronomer-cosmos) would add a scheduler round-trip per model
(seconds each, for 20 models of a few seconds) and a second DAG to keep in step
with the dbt project. dbt's own logs and docs show the per-model detail.

**Configuration**: connections `mfy_warehouse` (postgres) and `mfy_mlflow`
(http); variables `mfy_dataset`, `mfy_source`, `mfy_source_sha256`; none are
needed for the embedded warehouse. `MFY_SPARK_CONN_ID` (environment) names a
Spark connection to submit training to a cluster; unset, Spark runs locally.

**Tuning**: on `MFY_TUNE_DAY` (Sundays by default) `train_als` searches the ALS
grids; other nights it refreshes the champion (its movie factors kept, the users
with new ratings re-solved, no Spark), or re-fits its configuration in Spark
past `MFY_REFRESH_MAX_NEW` new ratings or with `MFY_REFIT=full`; the gate
promotes that fresher model.

**Backfill**: unpause the DAG, then `airflow backfill create --dag-id
movielens_nightly --from-date … --to-date … --max-active-runs 1` (the DAG's own
limit does not bind backfill runs; two nights at once on one warehouse fail).

**Run conf**: `{"force": true}` retrains and republishes even if nothing changed;
`{"train": {"tune": true}}` tunes today; `{"train": {...}}` overrides the
training configuration (grids or fixed ALS params; without one, the Airflow
variable `mfy_train_conf` or `MFY_TRAIN_CONF` gives it); `{"fail_fast": true}` fails
a task on its first try, without retries (`moviesforyou run` sets it: a person
at the console wants the error now, not after the back-off; scheduled runs keep
their retries).

**Errors**: a failed task's exception message goes to XCom (key `error`), and
`write_summary` keeps it in `ops.pipeline_runs.errors`, so the console and the
Health dashboard say why a run failed without opening the task log.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task
from airflow.sdk.bases.operator import TriggerRule

from moviesforyou.foundation import names
from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration import pipeline, summary, training
from moviesforyou.orchestration.tasks import run

RAW, MARTS, MODEL, RECS = (Asset(**asset) for asset in (
    names.RAW_ASSET, names.MARTS_ASSET, names.MODEL_ASSET, names.RECS_ASSET))

#: A Spark connection id (``MFY_SPARK_CONN_ID``): training goes through the Spark
#: provider's operator. (The settings module is light: no database, no heavy import.)
SPARK_CONN_ID = Settings.from_env().spark.conn_id
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conf() -> dict:
    return (get_current_context()["dag_run"].conf or {})


def _run_date():
    """The run's logical date; a manual run may have none, then its own time decides."""
    context = get_current_context()
    return context.get("logical_date") or context["dag_run"].run_after


@dag(
    dag_id=names.NIGHTLY_DAG,
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "data-team",
        "retries": 2,
        # Airflow's own setting (compose: AIRFLOW_RETRY_DELAY), two minutes by default
        "retry_delay": timedelta(seconds=int(
            os.environ.get("AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY", "120"))),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=3),
    },
    tags=["moviesforyou", "movielens", "nightly"],
    doc_md=__doc__,
)
def movielens_nightly():
    @task
    def extract_source() -> dict:
        return run(pipeline.extract_source, force=bool(_conf().get("force_ingest")))

    @task(outlets=[RAW])
    def validate_raw(load: dict) -> dict:
        return run(pipeline.validate_raw, load)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def check_changes(load: dict) -> bool:
        changes = run(pipeline.check_changes, load, force=bool(_conf().get("force")))
        get_current_context()["ti"].xcom_push(key="changes", value=changes)
        return changes["changed"]

    @task(outlets=[MARTS])
    def build_marts() -> dict:
        return run(pipeline.build_marts, logical_date=_run_date())

    @task
    def validate_marts() -> dict:
        return run(pipeline.validate_marts)

    @task
    def export_snapshot() -> dict:
        return run(pipeline.export_snapshot)

    @task(outlets=[MODEL])
    def gate_model(trained: dict | None, snapshot: dict) -> dict:
        return run(training.gate_model, trained, snapshot, _conf().get("train"))

    @task
    def score_recs() -> dict:
        return run(pipeline.score_recs)

    @task
    def validate_recs(scored: dict) -> dict:
        return run(pipeline.validate_recs, scored)

    @task(outlets=[RECS])
    def publish_recs(scored: dict) -> dict:
        return run(pipeline.publish_recs, scored)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def write_summary() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        context = get_current_context()
        ti, dag_run = context["ti"], context["dag_run"]
        tasks = {b["task_id"]: {"state": b["state"], "seconds": b["duration"]}
                 for b in ti.get_task_breadcrumbs(dag_run.dag_id, dag_run.run_id)}
        results = {name: ti.xcom_pull(task_ids=name) for name in (
            names.EXTRACT_SOURCE, names.VALIDATE_RAW, names.BUILD_MARTS, names.EXPORT_SNAPSHOT, names.TRAIN_ALS,
            names.GATE_MODEL, names.PUBLISH_RECS)}
        results[names.CHECK_CHANGES] = ti.xcom_pull(task_ids=names.CHECK_CHANGES, key="changes")
        failed = sorted(t for t, v in tasks.items()
                        if v["state"] in ("failed", "upstream_failed"))
        errors = {t: ti.xcom_pull(task_ids=t, key=summary.ERROR_KEY) for t, v in tasks.items()
                  if v["state"] == "failed"}
        state = "failed" if failed else (
            "success" if tasks.get(names.PUBLISH_RECS, {}).get("state") == "success"
            else "skipped")
        ended = run(
            summary.write_summary, dag_id=dag_run.dag_id, run_id=dag_run.run_id,
            logical_date=dag_run.logical_date, started_at=dag_run.start_date, tasks=tasks,
            results=results, state=state, errors=errors)
        if failed:
            raise AirflowFailException(ended["note"])  # written: no retry
        return ended

    load = extract_source()
    raw_ok = validate_raw(load)
    changed = check_changes(load)
    raw_ok >> changed
    marts = build_marts()
    changed >> marts >> validate_marts() >> (snapshot := export_snapshot())

    if SPARK_CONN_ID:
        from moviesforyou.orchestration.spark_submit import TrainOnSpark

        train = TrainOnSpark(task_id=names.TRAIN_ALS, conn_id=SPARK_CONN_ID, project=PROJECT,
                             name="moviesforyou-train", outlets=[MODEL])
        snapshot >> train
        trained = train.output
    else:
        @task(outlets=[MODEL])
        def train_als(snapshot: dict) -> dict:
            return run(training.train_als, snapshot, _conf().get("train"),
                       logical_date=_run_date())

        train = trained = train_als(snapshot)
    gated = gate_model(trained, snapshot)
    train >> gated
    scored = score_recs()
    gated >> scored
    published = publish_recs(scored)
    validate_recs(scored) >> published
    # all_done: the summary is written whatever happened upstream, then fails the run
    # if anything failed
    published >> write_summary()


movielens_nightly()
