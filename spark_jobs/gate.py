"""The champion gate: whether a challenger replaces the champion, decided in one place.

The challenger becomes ``champion`` only when, on the same holdout, its list
model's NDCG@k is higher than the champion's and its rating model's RMSE is no
worse than the champion's plus a tolerance (:func:`decide`). "Same holdout":
when the champion was evaluated on the same snapshot and split, its recorded
figures are used; otherwise the champion's configuration is re-fit on the
challenger's training part and scored on its test part, so neither model has
seen the test ratings. Three cases need no comparison and promote:

* no champion yet;
* a champion of another release (nothing to compare, nothing it could serve);
* the champion's own configuration re-fit on newer data (scored on this split
  it would be the same model, so the fresher fit wins).

When the holdout is too thin to judge (fewer than :data:`MIN_JUDGED_USERS` viewers
with a liked held-out film: a young or sampled release), the gate says so in the
decision's ``warning``: a first model still publishes, and a champion of the same
release stays unless the challenger is its own configuration on newer data.

A refresh (:mod:`spark_jobs.refresh`: the champion's movie factors with the new
ratings' users re-solved) is promoted while the version it refreshed is still
the champion (:func:`decide_refresh`).

:func:`gate_challenger` gathers both models' figures from the registry, decides,
and moves the alias through :mod:`spark_jobs.registry` (which only talks to
MLflow). The promotion ledger (``ops.model_promotions``) is the orchestration's
to write, from the returned :class:`Decision`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from moviesforyou.foundation.config import Settings
from spark_jobs import registry
from spark_jobs.config import TrainConfig
from spark_jobs.evaluation import Evaluator, prepare_evaluation
from spark_jobs.models import ModelParams
from spark_jobs.snapshot import Snapshot, read_kept_snapshot
from spark_jobs.splitters import Splits

log = logging.getLogger(__name__)

#: Viewers with a liked held-out film below which the gate cannot tell two models apart.
MIN_JUDGED_USERS = 50


def thin_holdout(judged_users: int | None) -> str | None:
    """The warning for a holdout too thin to judge, or None."""
    if judged_users is None or judged_users >= MIN_JUDGED_USERS:
        return None
    return (f"held-out data too thin to judge: {judged_users} viewer(s) with a liked "
            f"held-out film, fewer than {MIN_JUDGED_USERS}; the figures are noise")


@dataclass
class Decision:
    """One gate decision: what the ledger records and the DAG's XCom carries."""

    promoted: bool | None
    reason: str
    champion_before: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    version: str | None = None
    dataset: str | None = None
    snapshot_digest: str | None = None
    run_id: str | None = None
    action: str = "gate"
    warning: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def champion_after(self) -> str | None:
        return self.version if self.promoted else self.champion_before


def _params(tags: dict) -> tuple[ModelParams, ModelParams] | None:
    if not tags.get("mfy.explicit_params"):
        return None
    return (ModelParams(**json.loads(tags["mfy.explicit_params"])),
            ModelParams(**json.loads(tags["mfy.implicit_params"])))


def decide(*, challenger_metrics: dict[str, float], challenger: tuple[ModelParams, ModelParams],
           split_id: str, dataset: str, digest: str, champion, champion_dataset: str | None,
           evaluate: Callable[[ModelParams, ModelParams], dict[str, float]], k: int,
           rmse_tolerance: float,
           judged_users: int | None = None) -> tuple[bool, str, dict[str, float] | None]:
    """The rule. ``champion`` is the champion's model version (its tags) or None;
    ``judged_users``: viewers with a liked held-out film (:func:`thin_holdout`).

    Returns:
        (promoted, reason, the champion's figures when they were compared).
    """
    ndcg = f"ndcg_at_{k}"
    if champion is None:
        return True, "no champion yet", None
    if champion_dataset != dataset:
        return True, (f"champion v{champion.version} was trained on {champion_dataset}, not "
                      f"{dataset}: the first model of this release replaces it"), None
    same_config = _params(champion.tags) == tuple(challenger)
    if same_config and champion.tags.get("mfy.split_id") != split_id:
        return True, (f"same configuration as champion v{champion.version}, trained on newer "
                      f"data (snapshot {digest})"), None
    thin = thin_holdout(judged_users)
    if thin:
        return False, f"champion v{champion.version} stays: {thin}", None
    if champion.tags.get("mfy.split_id") == split_id:
        champion_metrics = {key[len("mfy.metric."):]: float(value)
                            for key, value in champion.tags.items()
                            if key.startswith("mfy.metric.")}
        how = "its recorded figures on the same split"
    else:
        champion_metrics = evaluate(*_params(champion.tags))
        how = "its configuration re-fit on this split"
    better_ranking = challenger_metrics[ndcg] > champion_metrics[ndcg]
    rmse_ok = challenger_metrics["rmse"] <= champion_metrics["rmse"] + rmse_tolerance
    figures = (f"NDCG@{k} {challenger_metrics[ndcg]:.4f} vs {champion_metrics[ndcg]:.4f}, "
               f"RMSE {challenger_metrics['rmse']:.4f} vs {champion_metrics['rmse']:.4f} "
               f"(tolerance {rmse_tolerance:g}); champion v{champion.version} by {how}")
    if better_ranking and rmse_ok:
        return True, f"challenger better: {figures}", champion_metrics
    if not better_ranking:
        return False, f"challenger ranks no better: {figures}", champion_metrics
    return False, f"challenger RMSE too high: {figures}", champion_metrics


def decide_refresh(*, refresh_of: str, champion,
                   challenger_metrics: dict[str, float]) -> tuple[bool, str]:
    """A refresh is promoted while the version it refreshed is still the champion; a
    champion that changed meanwhile (a rollback, a better model) stays."""
    if champion is not None and str(champion.version) == str(refresh_of):
        forward = ", ".join(f"{key} {value:.4f}" for key, value in challenger_metrics.items()
                            if key.startswith("forward_") and key != "forward_ratings")
        return True, (f"refresh of champion v{refresh_of}: its movie factors with the users "
                      f"of {challenger_metrics.get('forward_ratings', 0):.0f} new rating(s) "
                      "re-solved" + (f"; v{refresh_of} on those ratings before: {forward}"
                                     if forward else ""))
    current = f"v{champion.version}" if champion is not None else "none"
    return False, f"refresh of v{refresh_of}, but the champion is now {current}"


def gate_trained(settings: Settings, version: str, metrics: dict[str, float],
                 params: tuple[ModelParams, ModelParams], splits: Splits, snapshot: Snapshot,
                 evaluator: Evaluator, config: TrainConfig, run_id: str) -> Decision:
    """The gate for ``version``, trained on ``splits``: a champion of another
    configuration is re-fit and scored on these very splits."""
    client = registry.configure(settings)
    champion = registry.current_champion(settings, client)
    split_id = splits.identity(snapshot)
    judged = len(evaluator.users)  # viewers with a liked held-out film
    registry.tag_figures(settings, version, metrics, split_id=split_id,
                         dataset=snapshot.dataset)
    promoted, reason, champion_metrics = decide(
        challenger_metrics=metrics, challenger=params, split_id=split_id,
        dataset=snapshot.dataset, digest=snapshot.digest, champion=champion,
        champion_dataset=registry.dataset_of(client, champion) if champion else None,
        evaluate=lambda e, i: {"rmse": evaluator.explicit(e).rmse,
                               **evaluator.implicit(i).ranking},
        k=config.k, rmse_tolerance=config.rmse_tolerance,
        judged_users=judged)
    return _apply(settings, Decision(
        promoted, reason, str(champion.version) if champion else None, metrics,
        champion_metrics, version, snapshot.dataset, snapshot.digest, run_id,
        warning=thin_holdout(judged)))


def gate_challenger(settings: Settings, version: str, config: TrainConfig | None = None, *,
                    spark=None) -> Decision:
    """The gate for a version registered earlier (the DAG's ``gate_model``).

    The version's run names its snapshot and metrics; the same ``config`` as at
    training rebuilds the same splits, so a re-fit champion is scored on the
    challenger's holdout.
    """
    config = config or TrainConfig()
    client = registry.configure(settings)
    model = client.get_model_version(registry.model_name(settings), str(version))
    run = client.get_run(model.run_id)
    snapshot = read_kept_snapshot(settings.home / "snapshots" / run.data.tags["mfy.snapshot"])
    if run.data.tags.get("mfy.kind") == "refresh":  # no Spark, no splits
        registry.tag_figures(settings, str(version), None, dataset=snapshot.dataset)
        champion = registry.current_champion(settings, client)
        metrics = dict(run.data.metrics)
        promoted, reason = decide_refresh(refresh_of=run.data.tags["mfy.refresh_of"],
                                          champion=champion, challenger_metrics=metrics)
        decision = _apply(settings, Decision(
            promoted, reason, str(champion.version) if champion else None, metrics, None,
            str(version), snapshot.dataset, snapshot.digest, model.run_id))
    else:
        _, config, _, splits, evaluator = prepare_evaluation(settings, snapshot, config, spark,
                                                             "gate")
        metrics = {k: v for k, v in run.data.metrics.items() if not k.endswith("_seconds")}
        decision = gate_trained(settings, str(version), metrics, _params(model.tags), splits,
                                snapshot, evaluator, config, model.run_id)
    return decision


def _apply(settings: Settings, decision: Decision) -> Decision:
    """Tag the version with the decision and move the alias (MLflow)."""
    registry.record_decision(settings, decision.version, decision.promoted, decision.reason,
                             run_id=decision.run_id)
    log.info("gate: version %s %s (%s)", decision.version,
             "promoted" if decision.promoted else "rejected", decision.reason)
    if decision.warning:
        log.warning("gate: %s", decision.warning)
    return decision


# --------------------------------------------------------------------------- live


@dataclass(frozen=True)
class LiveTest:
    """Champion against challenger on real viewers: viewer-days shown each arm's lists
    and those who then rated a film it showed (hit rate at 10), and a two-sided
    two-proportion z-test of the difference."""

    champion_viewers: int
    champion_hits: int
    challenger_viewers: int
    challenger_hits: int

    def rate(self, arm: str) -> float | None:
        viewers, hits = ((self.champion_viewers, self.champion_hits) if arm == "champion"
                         else (self.challenger_viewers, self.challenger_hits))
        return hits / viewers if viewers else None

    @property
    def difference(self) -> float | None:
        """Challenger's hit rate minus the champion's."""
        if not (self.champion_viewers and self.challenger_viewers):
            return None
        return self.rate("challenger") - self.rate("champion")

    @property
    def z(self) -> float | None:
        n1, n2 = self.champion_viewers, self.challenger_viewers
        if not (n1 and n2):
            return None
        pooled = (self.champion_hits + self.challenger_hits) / (n1 + n2)
        spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        return self.difference / spread if spread > 0 else 0.0

    @property
    def p_value(self) -> float | None:
        """Two-sided: the chance of a difference this large if both arms were alike."""
        return None if self.z is None else math.erfc(abs(self.z) / math.sqrt(2))


#: Viewer-days per arm below which a live test decides nothing.
MIN_LIVE_VIEWERS = 100


def decide_live(test: LiveTest, alpha: float = 0.05) -> tuple[bool, str]:
    """Whether the challenger won on real viewers: a higher hit rate at 10, significant
    at ``alpha``, with at least :data:`MIN_LIVE_VIEWERS` viewer-days in each arm."""
    if min(test.champion_viewers, test.challenger_viewers) < MIN_LIVE_VIEWERS:
        return False, (f"too few viewer-days to judge: {test.champion_viewers} champion, "
                       f"{test.challenger_viewers} challenger (at least {MIN_LIVE_VIEWERS} "
                       "each)")
    figures = (f"hit rate at 10 {test.rate('challenger'):.4f} vs "
               f"{test.rate('champion'):.4f} (p = {test.p_value:.4f})")
    if test.difference > 0 and test.p_value < alpha:
        return True, f"challenger better live: {figures}"
    if test.difference <= 0 and test.p_value < alpha:
        return False, f"champion better live: {figures}"
    return False, f"no significant difference at {alpha}: {figures}"
