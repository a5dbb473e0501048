"""What ``spark-submit`` runs on a cluster: the nightly ``train_als`` step, in the driver.

``spark-submit src/moviesforyou/orchestration/train_job.py --snapshot … --date …``
(:class:`moviesforyou.orchestration.spark_submit.TrainOnSpark`) trains exactly as
the in-process task does and never gates; the project's packages reach the
driver and the executors as a zip (``--py-files``).
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import click

from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration.training import train_als
from spark_jobs import session


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--snapshot", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="A kept snapshot folder.")
@click.option("--date", "date", required=True, type=datetime.datetime.fromisoformat,
              metavar="DATE", help="The run's logical date (ISO 8601).")
@click.option("--config", default="{}", help="The run conf's training overrides, as JSON.")
def main(snapshot: Path, date: datetime.datetime, config: str) -> None:
    """Train as the nightly run of DATE does (spark-submit .../train_job.py): tune on
    MFY_TUNE_DAY or without a champion, else re-fit the champion's configuration;
    never gate."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    spark = session.get_spark(settings.home, spark=settings.spark)
    click.echo(f"executors import spark_jobs from {session.executor_code(spark)}")
    out = train_als(settings, {"path": str(snapshot)}, json.loads(config),
                    logical_date=date)
    click.echo(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
