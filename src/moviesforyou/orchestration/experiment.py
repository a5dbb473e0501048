"""Champion against challenger, live: what ``moviesforyou models experiment`` shows and
does. The publish runs the experiment (:mod:`moviesforyou.publishing.arms`); this
module reads its figures, tests them (:func:`spark_jobs.gate.decide_live`) and ends
it: promoted, through the registry's alias and the promotion ledger as every champion
decision is, or stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.orchestration import ledger
from moviesforyou.publishing import arms


@dataclass(frozen=True)
class Status:
    experiment: arms.Experiment | None
    figures: dict[str, dict]
    test: object | None  #: spark_jobs.gate.LiveTest
    won: bool
    verdict: str


def status(settings: Settings, alpha: float = 0.05) -> Status:
    """The running experiment (else the last one), its figures per arm and the test."""
    from spark_jobs.gate import LiveTest, decide_live

    warehouse.ensure(settings)
    experiment = arms.latest(settings)
    if experiment is None:
        return Status(None, {}, None, False, "no experiment has run on "
                      f"{settings.dataset}: set MFY_CHALLENGER_SHARE to start one")
    figures = arms.figures(settings, experiment)
    champion, challenger = figures.get("champion", {}), figures.get("challenger", {})
    test = LiveTest(int(champion.get("viewers") or 0), int(champion.get("hits_10") or 0),
                    int(challenger.get("viewers") or 0), int(challenger.get("hits_10") or 0))
    won, verdict = decide_live(test, alpha)
    return Status(experiment, figures, test, won, verdict)


def promote(settings: Settings, *, alpha: float = 0.05, force: bool = False) -> Status:
    """Make the running experiment's challenger the champion when it won live (or
    ``force``), record the decision in the ledger, and end the experiment. The next
    publish serves everyone the new champion."""
    from spark_jobs import registry

    found = status(settings, alpha)
    experiment = arms.running(settings)
    if experiment is None:
        raise arms.ExperimentError(f"no experiment is running on {settings.dataset}")
    test = found.test
    metrics = {"champion_viewers": test.champion_viewers, "champion_hits_10": test.champion_hits,
               "challenger_viewers": test.challenger_viewers,
               "challenger_hits_10": test.challenger_hits, "p_value": test.p_value}
    if not (found.won or force):
        ledger.record(settings, challenger=experiment.challenger_version, before=None,
                      after=None, promoted=False, action="experiment", reason=found.verdict,
                      dataset=settings.dataset, metrics=metrics)
        raise arms.ExperimentError(f"experiment {experiment.name}: not promoted: "
                                   f"{found.verdict} (--force promotes anyway)")
    reason = found.verdict if found.won else f"forced: {found.verdict}"
    before = registry.rollback(settings, experiment.challenger_version,
                               f"experiment {experiment.name}: {reason}",
                               gate_tag="promoted live")
    ledger.record(settings, challenger=experiment.challenger_version, before=before,
                  after=experiment.challenger_version, promoted=True, action="experiment",
                  reason=f"experiment {experiment.name}: {reason}", dataset=settings.dataset,
                  metrics=metrics)
    arms.end(settings, experiment, "promoted", reason)
    return status(settings, alpha)


def stop(settings: Settings, reason: str) -> arms.Experiment:
    """End the running experiment without promoting: the next publish serves everyone
    the champion (unless MFY_CHALLENGER_SHARE starts a new one)."""
    warehouse.ensure(settings)
    experiment = arms.running(settings)
    if experiment is None:
        raise arms.ExperimentError(f"no experiment is running on {settings.dataset}")
    arms.end(settings, experiment, "stopped", reason)
    return experiment
