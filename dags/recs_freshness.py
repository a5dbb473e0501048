"""
### Recommendations freshness and quality

Data-aware follower of `movielens_nightly`: runs whenever the `warehouse_recs`
asset is updated (a publish), and once a day as a watchdog.

1. `measure_recs`: catalogue coverage and popularity bias of the published
   lists into `ops.recs_quality`, which the *Model and pipeline health*
   dashboard charts.
2. `check_freshness`: how old the live recommendations are, how many app
   ratings wait for the next run, into `ops.freshness_checks`; fails (and so
   alerts) when the live publish is older than `MFY_MAX_RECS_AGE_HOURS` (36).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from moviesforyou.foundation import names
from moviesforyou.orchestration import freshness
from moviesforyou.orchestration.tasks import run

RECS = Asset(**names.RECS_ASSET)


@dag(
    dag_id=names.FRESHNESS_DAG,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 12 * * *", timezone="UTC"), assets=[RECS]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-team", "retries": 2, "retry_delay": timedelta(minutes=1),
                  "retry_exponential_backoff": True},
    tags=["moviesforyou", "monitoring"],
    doc_md=__doc__,
)
def recs_freshness():
    @task
    def measure_recs() -> dict:
        return run(freshness.measure_recs)

    @task(retries=0)
    def check_freshness() -> dict:
        return run(freshness.check_freshness)

    measure_recs() >> check_freshness()


recs_freshness()
