"""The backtest's ``experiment`` arm: champion against challenger, live, on replayed days.

After the first publish, a second model (:data:`CHALLENGER_CONFIG`, ALS with a small
fixed grid: another family than a tuned champion usually is) is trained in the arm's
home and becomes the registry's ``challenger``; if the gate made it the champion,
the champion before it is restored. A publish with ``MFY_CHALLENGER_SHARE`` (the
arm's setting, :data:`SHARE`) starts the experiment, and the nights that follow
refresh the champion as the ``refresh`` arm does while the challenger's viewers keep
its version. Each day's viewers are judged per arm (two rows per night,
``experiment/champion`` and ``experiment/challenger``), and after the last day
``moviesforyou models experiment``'s figures and test, from the online measures the
exposure log gave, close the replay.
"""

from __future__ import annotations

import logging

from moviesforyou.foundation.config import Settings
from moviesforyou.foundation.experiments import ARMS, arm_of
from moviesforyou.publishing import arms

log = logging.getLogger(__name__)

ARM = "experiment"
#: The challenger's share of viewers in the replay.
SHARE = "0.5"
#: The challenger's training: ALS alone, one small configuration.
CHALLENGER_CONFIG = {
    "explicit_grid": {"rank": [10], "reg_param": [0.1], "max_iter": [10]},
    "implicit_grid": {"rank": [32], "reg_param": [0.1], "alpha": [4.0], "max_iter": [10]},
    "bpmf_grid": {}, "ease_grid": {},
}


def start(settings: Settings) -> arms.Experiment:
    """Train the challenger, keep the champion, and publish the experiment."""
    from moviesforyou.orchestration import recs_publish, training
    from spark_jobs import registry
    from spark_jobs.config import TrainConfig

    client = registry.configure(settings)
    champion = str(registry.current_champion(settings, client).version)
    trained = training.train_and_gate(settings, TrainConfig(**CHALLENGER_CONFIG))
    if trained.promoted:
        training.rollback(settings, champion, "backtest: the champion stays, the new model "
                                              "is the experiment's challenger")
    recs_publish.publish(settings)
    run = arms.running(settings)
    if run is None:
        raise arms.ExperimentError("the backtest's experiment did not start (is "
                                   "MFY_CHALLENGER_SHARE set for the arm?)")
    log.info("experiment %s: v%s against v%s", run.name, run.challenger_version, champion)
    return run


def split(lists: dict[int, list[int]], run: arms.Experiment) -> dict[str, dict[int, list[int]]]:
    """The day's lists per arm, as the publish drew the viewers."""
    out: dict[str, dict[int, list[int]]] = {arm: {} for arm in ARMS}
    for user, shown in lists.items():
        out[arm_of(run.name, run.share, user)][user] = shown
    return out


def models(cur) -> dict[str, tuple[str, str]]:
    """Each arm's live model version and list family."""
    cur.execute("select arm, model_version, list_family from recs.arms")
    return {arm: (version, family) for arm, version, family in cur.fetchall()}


def verdict(settings: Settings) -> str:
    """The online measures built from the replay's exposures, and the experiment's test
    as ``moviesforyou models experiment`` gives it."""
    from moviesforyou.orchestration import experiment
    from moviesforyou.transformation import transform

    transform.run_dbt(settings, ["build", "--select", "tag:after_publish"])
    found = experiment.status(settings)
    rows = [f"{arm}: {f['viewers']} viewer-days, {f['hits_10']} rated a shown film within "
            f"the window (hit rate at 10 {f['hits_10'] / f['viewers']:.4f})"
            for arm, f in sorted(found.figures.items()) if f["viewers"]]
    return "; ".join([f"experiment {found.experiment.name}", *rows, found.verdict])
