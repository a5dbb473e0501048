"""Refresh nights: the champion's movie side kept, the viewers with new ratings re-solved.

Six nights of seven nothing is tuned; the question is only how to bring the
champion up to date with the day's ratings. A full re-fit runs Spark's ALS from
scratch for both models (about 28 minutes at 25M ratings on two cores). A
refresh does what one more ALS user step would: it keeps the champion's movie
factors and biases and re-solves, in NumPy, only the users who rated since the
champion was trained, with the same solves the API uses for a viewer who rated
since the publish (:mod:`moviesforyou.foundation.foldin`, Spark's ``computeFactors`` with its
ALS-WR regularisation). Spark's ALS ends every iteration with the user step, so
re-solving a user whose ratings did not change gives back the factors they have:
only the touched users move, and they move exactly as a user step would.

A refresh is a new registered version (``mfy.kind = refresh``, ``mfy.refresh_of``
the version it refreshes) with its own MLflow run. Before re-solving, it scores
the champion on the ratings that arrived since it was trained, a forward
holdout nobody trained on (``forward_rmse``, ``forward_ndcg_at_k``): night after
night that is the live model's drift, in the run list. The gate promotes a
refresh of the current champion (:func:`spark_jobs.registry.gate_refresh`).

The movie side goes stale slowly, so a full re-fit runs instead (and says why)
when the ratings new since the champion exceed ``MFY_REFRESH_MAX_NEW`` of the
total, when the ratings it was trained on are no longer all there (a new release
replaced them, rather than ratings being added), or when the champion predates
refreshes (it recorded no snapshot to compare with). New movies get no factors
until then: they are scored by their bias for predicted ratings and left out of
lists, as any movie the model does not know.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moviesforyou.foundation import foldin
from moviesforyou.foundation.config import Settings
from spark_jobs import metrics, registry
from spark_jobs.models import (
    ITEM,
    RATING,
    TIME,
    USER,
    Biases,
    Factors,
    factor_scorer,
    load_factors,
    lookup,
    positions,
    seen_items,
    top_k,
)
from spark_jobs.snapshot import Snapshot, load_snapshot

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a refresh starts from: the champion, and the ratings it has not seen."""

    champion: str
    since: int  # the newest rating the champion was trained on (epoch seconds)
    new: pd.DataFrame  # the ratings after it


def plan(settings: Settings, ratings: pd.DataFrame, *, max_new: float) -> Plan | str:
    """A :class:`Plan`, or why the night needs a full re-fit instead."""
    client = registry.configure(settings)
    champion = registry.current_champion(settings, client)
    if champion is None:
        return "no champion to refresh"
    if registry.dataset_of(client, champion) != settings.dataset:
        return f"champion v{champion.version} is not a model of {settings.dataset}"
    params = client.get_run(champion.run_id).data.params
    if "snapshot_rows" not in params or "snapshot_max_rated_at" not in params:
        return f"champion v{champion.version} recorded no snapshot to refresh from"
    rows, since = int(params["snapshot_rows"]), int(float(params["snapshot_max_rated_at"]))
    after = ratings[TIME].to_numpy() > since
    new, old = int(after.sum()), int((~after).sum())
    # appended ratings, or re-ratings that replaced a row (the new row is counted in
    # ``new``): anything else means the ratings under the champion changed
    if not rows - new <= old <= rows:
        return (f"the {rows:,} ratings champion v{champion.version} was trained on are now "
                f"{old:,} of the same age: the release changed under it")
    if new > max_new * len(ratings):
        return (f"{new:,} ratings since champion v{champion.version} are more than "
                f"MFY_REFRESH_MAX_NEW = {max_new:g} of {len(ratings):,}")
    return Plan(str(champion.version), since, ratings[after])


def resolve_users(explicit: Factors, implicit: Factors,
                  history: pd.DataFrame) -> tuple[Factors, Factors]:
    """Both models with the users of ``history`` (their every rating) re-solved against
    the models' movie factors, biases and regularisation (or, for a family other than
    ALS, folded in as the API does, :mod:`moviesforyou.foundation.foldin`); other users
    untouched."""
    history = history.sort_values(USER, kind="stable")
    users, starts = np.unique(history[USER].to_numpy(), return_index=True)
    bounds = np.append(starts, len(history))
    movies, stars = history[ITEM].to_numpy(), history[RATING].to_numpy(np.float64)
    biases = explicit.biases
    base = biases.mu + lookup(biases.item, movies, 0.0)
    e_rows, i_rows = positions(explicit.item_index, movies), positions(implicit.item_index, movies)
    gram = foldin.gram(implicit.item_factors)
    user_bias = np.empty(len(users))
    e_new = np.full((len(users), explicit.item_factors.shape[1]), np.nan)
    i_new = np.full((len(users), implicit.item_factors.shape[1]), np.nan)
    for j in range(len(users)):
        span = slice(bounds[j], bounds[j + 1])
        r, offset = stars[span], base[span]
        # the last step of Biases.fit, then the ALS user steps (moviesforyou.foundation.foldin)
        user_bias[j] = (r - offset).sum() / (len(r) + foldin.BIAS_REG_USER)
        rows = e_rows[span]
        if (rows >= 0).any():
            residuals = (r - offset - user_bias[j])[rows >= 0]
            e_new[j] = foldin.explicit_user(explicit.item_factors[rows[rows >= 0]], residuals,
                                            explicit.fold_in_regularisation)
        rows = i_rows[span]
        if (rows >= 0).any():
            picked = rows[rows >= 0]
            i_new[j] = foldin.list_user(
                implicit.params.family, implicit.item_factors[picked], r[rows >= 0],
                gram=gram, reg=implicit.params.reg_param, alpha=implicit.params.alpha,
                weights=None if implicit.fold_weights is None else implicit.fold_weights[picked])
    user_biases = pd.Series(user_bias, index=users).combine_first(biases.user)
    refreshed = dataclasses.replace(
        _with_users(explicit, users, e_new),
        biases=Biases(biases.mu, user_biases, biases.item))
    return refreshed, _with_users(implicit, users, i_new)


def _with_users(factors: Factors, users: np.ndarray, rows: np.ndarray) -> Factors:
    """``factors`` with these users' rows replaced or added (rows of NaN: no factors)."""
    solved = ~np.isnan(rows).any(axis=1)
    at = positions(factors.user_index, users)
    user_factors = factors.user_factors.copy()
    user_factors[at[solved & (at >= 0)]] = rows[solved & (at >= 0)]
    added = solved & (at < 0)
    return dataclasses.replace(
        factors, user_ids=np.concatenate([factors.user_ids, users[added]]),
        user_factors=np.vstack([user_factors, rows[added]]))


def forward_metrics(explicit: Factors, implicit: Factors, touched: pd.DataFrame,
                    plan_: Plan, *, k: int, threshold: float) -> dict[str, float]:
    """The champion on the ratings that arrived after it was trained: RMSE of its
    predicted ratings, and NDCG@k of its lists (every movie the user had not rated
    before is a candidate; new ratings >= ``threshold`` are relevant).

    Args:
        touched: every rating of the users with new ratings (their histories).
    """
    new = plan_.new
    out = {"forward_ratings": float(len(new))}
    if new.empty:
        return out
    out["forward_rmse"] = metrics.rmse(explicit.predict(new[USER], new[ITEM]), new[RATING])
    liked = new[new[RATING] >= threshold]
    known = liked[positions(implicit.user_index, liked[USER]) >= 0]
    if not known.empty:
        users = np.unique(known[USER].to_numpy())
        before = touched[(touched[TIME] <= plan_.since) & touched[USER].isin(users)]
        relevant = {int(u): set(g.tolist()) for u, g in known.groupby(USER)[ITEM]}
        recs = top_k(factor_scorer(implicit, implicit.item_ids), users, implicit.item_ids,
                     seen_items(before), k)
        out[f"forward_ndcg_at_{k}"] = metrics.ndcg_at_k(recs, relevant, k)
        out["forward_users"] = float(len(users))
    return out


def refresh(settings: Settings, snapshot: Snapshot, *, max_new: float, k: int = 10,
            threshold: float = 4.0) -> dict | None:
    """Register a refresh of the champion trained on ``snapshot`` (no gate), as
    :func:`spark_jobs.nightly.train_als` returns it; None (logged) when the night
    needs a full re-fit."""
    import mlflow

    from spark_jobs.train import git_commit, log_snapshot

    started = time.time()
    ratings = load_snapshot(snapshot)
    found = plan(settings, ratings, max_new=max_new)
    if isinstance(found, str):
        log.info("full re-fit instead of a refresh: %s", found)
        return None
    work = Path(tempfile.mkdtemp(prefix="mfy-refresh-", dir=settings.home))
    try:
        # the champion's factors as the last publish downloaded them (kept per version)
        explicit, implicit = load_factors(registry.export_champion(settings))
        touched = ratings[ratings[USER].isin(found.new[USER].unique())]
        n_users = int(touched[USER].nunique())
        figures = forward_metrics(explicit, implicit, touched, found, k=k, threshold=threshold)
        new_explicit, new_implicit = resolve_users(explicit, implicit, touched)
        new_movies = int(np.setdiff1d(found.new[ITEM].unique(), implicit.item_ids).size)
        tags = {"mfy.dataset": snapshot.dataset, "mfy.snapshot": snapshot.digest,
                "mfy.git_commit": git_commit(), "mfy.kind": "refresh",
                "mfy.refresh_of": found.champion}
        name = (f"{snapshot.dataset} {snapshot.digest} refresh of v{found.champion} "
                f"{time.strftime('%Y-%m-%d %H:%M')}")
        with registry.start_run(settings, run_name=name, tags=tags, description=(
                f"Refresh of champion v{found.champion}: its movie factors and biases kept, "
                f"{n_users:,} user(s) with {len(found.new):,} new rating(s) "
                "re-solved (ALS user step). forward_* figures are the champion's on those new "
                "ratings, before the refresh.")) as run:
            log_snapshot(snapshot)
            mlflow.log_params({
                "refresh_of": found.champion, "refreshed_since": found.since,
                "new_ratings": len(found.new),
                "refreshed_users": n_users,
                "new_movies_without_factors": new_movies, "refresh_max_new": max_new, "k": k,
                **{f"explicit_{p}": v for p, v in dataclasses.asdict(explicit.params).items()},
                **{f"implicit_{p}": v for p, v in dataclasses.asdict(implicit.params).items()},
            })
            mlflow.log_dict({}, "baselines.json")  # baselines are the full runs'
            version = registry.log_and_register(settings, new_explicit, new_implicit,
                                                work / "model", ratings)
            client = mlflow.MlflowClient()
            for key, value in (("mfy.refresh_of", found.champion),
                               ("mfy.refreshed_since", str(found.since))):
                client.set_model_version_tag(registry.model_name(settings), version, key, value)
            figures["train_seconds"] = time.time() - started
            mlflow.log_metrics(figures)
            mlflow.set_tags({"mfy.model_version": version})
        log.info("refresh of v%s: v%s, %d user(s) re-solved for %d new rating(s) in %.1f s; %s",
                 found.champion, version, n_users, len(found.new),
                 figures["train_seconds"], figures)
        return {"version": version, "run_id": run.info.run_id, "metrics": figures,
                "baselines": {}, "tuned": False, "refresh_of": found.champion,
                "explicit": dataclasses.asdict(explicit.params),
                "implicit": dataclasses.asdict(implicit.params)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
