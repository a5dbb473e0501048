"""Score the champion in Spark and publish it: the publishing stage's three steps,
wired to the training stage's scoring and the quality stage's recs suite.

The nightly DAG's ``score_recs``, ``validate_recs`` and ``publish_recs`` call
:func:`prepare`, :func:`validate_build` and :func:`go_live`;
``moviesforyou publish`` calls :func:`publish` (all three).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from moviesforyou.foundation.config import Settings
from moviesforyou.publishing import arms
from moviesforyou.publishing import publish as stage
from moviesforyou.quality import checks


@dataclass
class SparkScorer:
    """The publishing stage's :class:`~moviesforyou.publishing.publish.Scorer`, in Spark.

    The session starts only when something is scored (a test hands in its own).
    Spark and MLflow are imported when used: the DAG file imports this module.
    """

    settings: Settings
    spark: object | None = None

    def seen(self, work: Path) -> Path:
        from spark_jobs.snapshot import export_snapshot

        return export_snapshot(self.settings, work).path

    def score(self, factors: Path, seen: Path, out: Path, *, rated_after: int | None,
              genres, tags, similar: bool = True):
        from spark_jobs.score import score
        from spark_jobs.session import get_spark

        if self.spark is None:
            self.spark = get_spark(self.settings.home, app_name="moviesforyou-score",
                                   spark=self.settings.spark)
        return score(self.spark, factors, seen, out, score_config(self.settings),
                     rated_after=rated_after, genres=genres, tags=tags, similar=similar)


def score_config(settings: Settings):
    """The scoring settings (``MFY_RECS_N``, ``MFY_SIMILAR_*``) as Spark's scorer takes them."""
    from spark_jobs.score import ScoreConfig

    config = settings.publish
    return ScoreConfig(n=config.n, similar_n=config.similar_n,
                       min_ratings=config.similar_min_ratings, similarity=config.similarity)


def scorer_for(settings: Settings, spark=None, *, submit: bool = False):
    """Where scoring runs: with ``submit`` (the nightly DAG's ``score_recs``) and
    ``MFY_SPARK_CONN_ID`` naming a Spark connection, submitted to that cluster as
    training is; else a Spark session here (``spark``, or one started when needed)."""
    if submit and settings.spark.conn_id:
        from moviesforyou.foundation.config import find_project_root
        from moviesforyou.orchestration.spark_submit import ScoreOnCluster

        return ScoreOnCluster(settings, settings.spark.conn_id, str(find_project_root()))
    return SparkScorer(settings, spark)


def prepare(settings: Settings, *, spark=None, factors: Path | None = None,
            submit: bool = False) -> int:
    """Step 1: the champion from the registry (or ``factors``), scored (by
    :func:`scorer_for`) and built."""
    from spark_jobs import registry

    started = time.perf_counter()
    factors = factors or registry.export_champion(settings)
    challenger = challenger_arm(settings, factors)
    return stage.prepare(settings, factors=factors,
                         scorer=scorer_for(settings, spark, submit=submit),
                         export_seconds=time.perf_counter() - started, challenger=challenger)


def challenger_arm(settings: Settings, factors: Path) -> arms.Challenger | None:
    """The challenger's arm of this publish (``MFY_CHALLENGER_SHARE``): the running
    experiment's, or one started with the registry's ``challenger``; None without."""
    import json

    from spark_jobs import registry

    champion = json.loads((factors.parent / "champion.json").read_text())
    wanted = settings.publish.challenger_share > 0
    experiment = arms.plan(settings, champion_version=champion["version"],
                           challenger_version=registry.current_challenger(settings)
                           if wanted else None, model_name=champion["model_name"])
    if experiment is None:
        return None
    folder, meta = registry.export_version(settings, experiment.challenger_version)
    return arms.Challenger(experiment, folder, meta)


def validate_build(settings: Settings, publish_id: int) -> checks.Report:
    """Step 2: the ``recs`` suite on the build; a failure drops it and raises
    :class:`~moviesforyou.quality.checks.ValidationFailed`."""

    def audit(schema: str) -> checks.Report:
        return checks.validate(settings, "recs", schema=schema,
                               params={"n": settings.publish.n},
                               subject=f"publish:{publish_id}")

    return stage.validate_build(settings, publish_id, audit)


def go_live(settings: Settings, publish_id: int) -> stage.PublishResult:
    """Step 3: the atomic swap."""
    return stage.go_live(settings, publish_id)


def publish(settings: Settings, *, spark=None,
            factors: Path | None = None) -> stage.PublishResult:
    """All three steps. Raises, and changes nothing live, on any failure."""
    publish_id = prepare(settings, spark=spark, factors=factors)
    validate_build(settings, publish_id)
    return go_live(settings, publish_id)
