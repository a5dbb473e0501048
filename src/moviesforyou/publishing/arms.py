"""Champion against challenger, live: the experiment a publish serves.

With ``MFY_CHALLENGER_SHARE`` above 0, a publish serves a fixed challenger version to
that share of viewers (:mod:`moviesforyou.foundation.experiments` draws the arms).
The first such publish starts an experiment (a row of ``ops.experiments``) with the
registry's ``challenger``; later ones serve the same version to the same viewers
until the experiment ends: promoted (``moviesforyou models experiment promote``),
stopped (``... experiment stop``), or the share set back to 0. Its share is the one it
started with: a changed setting would move viewers between arms, so it waits for the
next experiment.

Both arms are built into the same recs tables (``recs_build.build``): a viewer's
lists, factors and fold-in settings are their arm's (``recs.arms``), so the recs
suite validates both and a rollback restores both.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.errors import MoviesForYouError
from moviesforyou.foundation.experiments import CHALLENGER, challenger_mask

log = logging.getLogger(__name__)


class ExperimentError(MoviesForYouError):
    """An experiment cannot start, or what was asked of it does not apply."""


@dataclass(frozen=True)
class Experiment:
    experiment_id: int
    name: str  #: also the salt of the arm hash
    dataset: str
    model_name: str
    challenger_version: str
    champion_version_at_start: str | None
    share: float
    started_at: object
    ended_at: object = None
    outcome: str | None = None
    reason: str | None = None


@dataclass
class Challenger:
    """The challenger's arm of a publish: its experiment, its factors (a folder from
    the registry, ``meta`` its ``model_name``, ``version`` and ``run_id``) and, once
    scored, its viewers' lists."""

    experiment: Experiment
    factors: Path
    meta: dict
    scored: object = None


_COLUMNS = ("experiment_id, name, dataset, model_name, challenger_version, "
            "champion_version_at_start, share, started_at, ended_at, outcome, reason")


def running(settings: Settings) -> Experiment | None:
    """The experiment running on ``settings.dataset``, if any."""
    return _one(settings, f"select {_COLUMNS} from ops.experiments "
                          "where dataset = %s and ended_at is null", (settings.dataset,))


def latest(settings: Settings) -> Experiment | None:
    """The running experiment, else the one that ended last."""
    return _one(settings, f"select {_COLUMNS} from ops.experiments where dataset = %s "
                          "order by ended_at is null desc, experiment_id desc limit 1",
                (settings.dataset,))


def _one(settings: Settings, query: str, params: tuple) -> Experiment | None:
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return Experiment(*row) if row else None


def start(settings: Settings, *, model_name: str, challenger_version: str,
          champion_version: str, share: float) -> Experiment:
    """Start an experiment serving ``challenger_version`` to ``share`` of the viewers."""
    if not 0 < share < 1:
        raise ExperimentError(f"MFY_CHALLENGER_SHARE={share}: an experiment needs a share "
                              "above 0 and below 1")
    name = f"{settings.dataset}-v{challenger_version}-{time.strftime('%Y%m%dT%H%M%S')}"
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("insert into ops.experiments (name, dataset, model_name, challenger_version, "
                    f"champion_version_at_start, share) values (%s, %s, %s, %s, %s, %s) "
                    f"returning {_COLUMNS}",
                    (name, settings.dataset, model_name, challenger_version, champion_version,
                     share))
        started = Experiment(*cur.fetchone())
    log.info("experiment %s: v%s against the champion v%s for %.1f%% of viewers", name,
             challenger_version, champion_version, 100 * share)
    return started


def end(settings: Settings, experiment: Experiment, outcome: str, reason: str) -> None:
    with contextlib.closing(warehouse.connect(settings)) as conn, conn, conn.cursor() as cur:
        cur.execute("update ops.experiments set ended_at = now(), outcome = %s, reason = %s "
                    "where experiment_id = %s and ended_at is null",
                    (outcome, reason, experiment.experiment_id))
    log.info("experiment %s ended (%s): %s", experiment.name, outcome, reason)


def plan(settings: Settings, *, champion_version: str, challenger_version: str | None,
         model_name: str) -> Experiment | None:
    """The experiment this publish serves, started or ended as the setting says:

    * share 0: none (a running one is stopped);
    * share above 0 and one running: it, with the share it started with;
    * share above 0 and none running: one started with ``challenger_version`` (the
      registry's ``challenger``), unless that is the champion itself (then none).
    """
    warehouse.ensure(settings)  # ops.experiments, on a warehouse from before it
    share = settings.publish.challenger_share
    current = running(settings)
    if share <= 0:
        if current is not None:
            end(settings, current, "stopped", "MFY_CHALLENGER_SHARE set to 0")
        return None
    if current is not None:
        if abs(current.share - share) > 1e-9:
            log.warning("experiment %s keeps its share %.4f (MFY_CHALLENGER_SHARE is %.4f): "
                        "stop it to start one with the new share", current.name, current.share,
                        share)
        return current
    if challenger_version is None or challenger_version == champion_version:
        log.info("MFY_CHALLENGER_SHARE=%s but the challenger is the champion (v%s): "
                 "no experiment", share, champion_version)
        return None
    return start(settings, model_name=model_name, challenger_version=challenger_version,
                 champion_version=champion_version, share=share)


def seen_of_arm(seen: Path, out: Path, experiment: Experiment) -> Path:
    """The seen-ratings snapshot of the challenger's viewers only (what its scoring needs),
    written to ``out``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    ratings = pads.dataset(str(seen), format="parquet")
    users = pc.unique(ratings.to_table(columns=["user_id"])["user_id"]).to_numpy()
    chosen = users[challenger_mask(experiment.name, experiment.share, users)]
    out.mkdir(parents=True, exist_ok=True)  # only the chosen viewers' ratings are read
    pq.write_table(ratings.to_table(filter=pc.field("user_id").isin(pa.array(chosen))),
                   out / "part-0.parquet")
    log.info("experiment %s: %d of %d viewers in the %s arm", experiment.name, len(chosen),
             len(users), CHALLENGER)
    return out


def figures(settings: Settings, experiment: Experiment) -> dict[str, dict]:
    """Per arm, the experiment's online figures so far (``marts.mart_online_measures``
    of the publishes that served it): viewer-days shown lists, those who then rated a
    shown film (hit at 10 and 50, liked at 10), new ratings and those of shown films.
    Empty before the measures are first built."""
    with contextlib.closing(warehouse.connect(settings)) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('marts.mart_online_measures') is not null")
        if not cur.fetchone()[0]:
            return {}
        cur.execute("""
            select arm, string_agg(distinct model_version, ', '),
                   sum(exposed_viewers), sum(hit_viewers_10), sum(hit_viewers_50),
                   sum(liked_hit_viewers_10), sum(new_ratings), sum(new_ratings_of_shown),
                   min(shown_on), max(shown_on), bool_and(window_closed)
            from marts.mart_online_measures
            where publish_id in (select publish_id from ops.publish_log
                                 where experiment = %s)
            group by arm order by arm""", (experiment.name,))
        names = ("model_versions", "viewers", "hits_10", "hits_50", "liked_hits_10",
                 "new_ratings", "new_ratings_of_shown", "first_day", "last_day",
                 "window_closed")
        return {arm: dict(zip(names, rest, strict=True)) for arm, *rest in cur.fetchall()}
