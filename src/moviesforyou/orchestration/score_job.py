"""What ``spark-submit`` runs on a cluster for ``score_recs``: the champion scored, in
the driver and its executors.

:class:`moviesforyou.orchestration.spark_submit.ScoreOnCluster` submits it with the
project's packages as a zip (``--py-files``). Its inputs (the champion's factors, the
seen-ratings snapshot, the content signals) and its outputs (the scored lists and
``score_result.json``) are in shared storage under ``MFY_HOME``.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import click

from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration.recs_publish import score_config
from spark_jobs import session
from spark_jobs.score import score

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--factors", type=_FOLDER, required=True, help="The champion's factor folder.")
@click.option("--seen", type=click.Path(exists=True, path_type=Path), required=True,
              help="The seen-ratings snapshot (Parquet).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the scored lists and score_result.json go.")
@click.option("--content", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="The films' genres and tags (a pickle the scorer wrote).")
@click.option("--rated-after", type=int, default=None,
              help="Score only the users who rated after this time (epoch seconds).")
@click.option("--similar/--no-similar", default=True, show_default=True,
              help="Score the similar movies too (not for an experiment's challenger).")
def main(factors: Path, seen: Path, out: Path, content: Path, rated_after: int | None,
         similar: bool) -> None:
    """Score the champion as the nightly ``score_recs`` does (spark-submit
    .../score_job.py)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    spark = session.get_spark(settings.home, app_name="moviesforyou-score",
                              spark=settings.spark)
    click.echo(f"executors import spark_jobs from {session.executor_code(spark)}")
    signals = pickle.loads(content.read_bytes())
    result = score(spark, factors, seen, out, score_config(settings), rated_after=rated_after,
                   genres=signals["genres"], tags=signals["tags"], similar=similar)
    done = {"user_recommendations": str(result.user_recommendations),
            "similar_movies": str(result.similar_movies) if result.similar_movies else None,
            "users": result.users, "seconds": result.seconds}
    (out / "score_result.json").write_text(json.dumps(done))
    click.echo(json.dumps(done, indent=2))


if __name__ == "__main__":
    main()
