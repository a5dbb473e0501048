"""Instant personalisation: a viewer who rated films since the publish gets a list
folded in against the live movie factors on their next request.

The nightly run stays the authority: once it has trained on those ratings and
published, the viewer is no longer "pending" and gets the stored list again.
The fold-in itself is :mod:`moviesforyou.foundation.foldin` (the ALS user step in NumPy);
this module keeps the live publish's movie side in memory, loaded on the first
fold-in after each publish (at ml-25m's 59,047 movies and rank 50, about 50 MB
per worker process), and turns a folded-in viewer into the API's answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import numpy as np

from moviesforyou.foundation import foldin
from moviesforyou.foundation.experiments import CHAMPION, arm_of
from serving import db

log = logging.getLogger(__name__)

#: ``source`` of a folded-in recommendation.
SOURCE = "als-live"


@dataclass
class Predictions:
    """A viewer's predicted rating of every movie of the live model, and what they rated."""

    model: foldin.Model
    predicted: np.ndarray  # per model row
    rated: set[int]

    def of(self, movie_ids) -> np.ndarray:
        """Predicted ratings of ``movie_ids``; NaN for movies the model does not have."""
        rows = self.model.rows(movie_ids)
        out = np.full(len(rows), np.nan)
        out[rows >= 0] = self.predicted[rows[rows >= 0]]
        return out


class LiveModels:
    """The live publish's fold-in models, one per arm, per worker process."""

    def __init__(self) -> None:
        #: arm -> (publish id, model, per genre the model rows of its movies, settings)
        self._models: dict[str, tuple[int, foldin.Model | None, dict[str, np.ndarray],
                                      dict]] = {}
        self._lock = asyncio.Lock()

    async def model(self, conn, user_id: int
                    ) -> tuple[foldin.Model | None, dict[str, np.ndarray], dict]:
        """(model, per genre the model rows of its movies, its settings) of the viewer's
        arm in the live publish (:func:`~moviesforyou.foundation.experiments.arm_of`, the
        rule ``recs.arm`` applies); the model is None when the publish lacks the settings
        a fold-in needs."""
        live = await conn.fetchrow(db.FOLD_IN_SETTINGS)
        if live is None:
            return None, {}, {}
        arm = arm_of(live["experiment"], live["challenger_share"], user_id)
        async with self._lock:
            kept = self._models.get(arm)
            if kept is None or kept[0] != live["publish_id"]:
                settings = dict(live)  # the champion's; the challenger's are its arm's
                if arm != CHAMPION:
                    settings.update(dict(await conn.fetchrow(db.ARM_SETTINGS, arm)))
                kept = (live["publish_id"], *await self._load(conn, settings, arm), settings)
                self._models[arm] = kept
        return kept[1], kept[2], kept[3]

    @staticmethod
    async def _load(conn, live, arm: str) -> tuple[foldin.Model | None, dict[str, np.ndarray]]:
        rows = await conn.fetch(db.FOLD_IN_MOVIES, arm)
        model = foldin.Model.from_rows(rows, live)
        if model is None:
            log.info("publish %s has no fold-in settings: no live fold-ins", live["publish_id"])
            return None, {}
        genres: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            for genre in row["genres"]:
                genres.setdefault(genre, []).append(i)
        log.info("fold-in model of publish %s, arm %s: %d movies", live["publish_id"], arm,
                 len(rows))
        return model, {g: np.array(i) for g, i in genres.items()}


async def _history(conn, user_id: int, dataset: str) -> tuple[list[int], list[float]]:
    history = await conn.fetch(db.VIEWER_HISTORY, user_id, dataset)
    return [r["movie_id"] for r in history], [r["rating"] for r in history]


async def recommend(models: LiveModels, conn, user_id: int, dataset: str, k: int,
                    excluded: list[str]) -> tuple[int, bytes] | None:
    """(publish id, JSON answer) of a folded-in list, or None when the viewer's
    ratings give the model nothing to fold in (no rated movie has factors)."""
    model, genres, live = await models.model(conn, user_id)
    if model is None:
        return None
    rated, stars = await _history(conn, user_id, dataset)
    viewer = model.fold_in(rated, stars)
    if viewer.factors is None:
        return None
    skip = np.zeros(len(model.movie_ids), dtype=bool)
    for genre in excluded:
        skip[genres.get(genre, [])] = True
    top = model.top(viewer, rated, k, skip)
    if not len(top):
        return None
    catalogue = {r["movie_id"]: r for r in await conn.fetch(
        db.CATALOGUE_ROWS, [int(model.movie_ids[i]) for i in top])}
    listed = _listed(catalogue, model, top, viewer.scores, viewer.predicted[top], SOURCE)
    body = {"user_id": user_id, "model_version": live["model_version"],
            "publish_id": live["publish_id"], "exclude_genres": excluded,
            "folded_in_ratings": len(rated), "recommendations": listed}
    return live["publish_id"], json.dumps(body).encode()


async def top_up(models: LiveModels, conn, user_id: int, dataset: str, k: int,
                 excluded: list[str], stored: dict) -> tuple[int, bytes] | None:
    """(publish id, JSON answer) of a known user's stored list ``stored`` (the answer of
    ``recs.recommend`` without its top-up) filled to ``k`` from their published implicit
    factors: the rest of the catalogue scored in NumPy (one product with the movie
    matrix, a millisecond at ml-25m's 59,047 movies, where the same in SQL takes tens),
    without the excluded genres, the movies they rated and those already listed; ranked
    as ``recs.recommend``'s own top-up ranks them (score, then movie id). None without a
    fold-in model or published factors: then Postgres tops it up."""
    model, genres, live = await models.model(conn, user_id)
    if model is None:
        return None
    row = await conn.fetchrow(db.USER_FACTORS, user_id)
    if row is None or row["implicit_factors"] is None:
        return None
    listed = stored["recommendations"]
    scores = model.scores_of(row["implicit_factors"])
    skip = np.zeros(len(model.movie_ids), dtype=bool)
    for genre in excluded:
        skip[genres.get(genre, [])] = True
    rated, _ = await _history(conn, user_id, dataset)
    top = model.best(scores, [*rated, *(m["movie_id"] for m in listed)], k - len(listed), skip)
    predicted = model.predict(row["bias"], row["explicit_factors"], rows=top)
    catalogue = {r["movie_id"]: r for r in await conn.fetch(
        db.CATALOGUE_ROWS, [int(model.movie_ids[i]) for i in top])}
    added = _listed(catalogue, model, top, scores, predicted, "als", after=len(listed))
    body = {"user_id": user_id, "model_version": live["model_version"],
            "publish_id": live["publish_id"], "exclude_genres": excluded,
            "recommendations": listed + added}
    return live["publish_id"], json.dumps(body).encode()


def _listed(catalogue: dict, model: foldin.Model, top: np.ndarray, scores: np.ndarray,
            predicted: np.ndarray, source: str, after: int = 0) -> list[dict]:
    """The model rows ``top`` as the API lists recommendations, ranked from ``after`` + 1
    (``scores`` per model row, ``predicted`` per row of ``top``); movies missing from
    ``catalogue`` (movie id -> its catalogue row) are left out."""
    listed = []
    for i, stars in zip(top, predicted, strict=True):
        movie = catalogue.get(int(model.movie_ids[i]))
        if movie is not None:
            listed.append({
                "rank": after + len(listed) + 1, "movie_id": movie["movie_id"],
                "title": movie["title"], "year": movie["release_year"],
                "genres": list(movie["genres"]), "score": float(scores[i]),
                "predicted_rating": round(float(stars), 2), "source": source})
    return listed


async def viewer_predictions(models: LiveModels, conn, user_id: int, dataset: str,
                             pending: bool) -> Predictions | None:
    """A viewer's predictions for the search: folded in when they rated films since the
    publish (``pending``), else from their published factors, else the bias baseline;
    None without a fold-in model."""
    model, _, _ = await models.model(conn, user_id)
    if model is None:
        return None
    rated, stars = await _history(conn, user_id, dataset)
    if pending and rated:
        return Predictions(model, model.fold_in(rated, stars).predicted, set(rated))
    row = await conn.fetchrow(db.USER_FACTORS, user_id)
    factors = (0.0, None) if row is None else (row["bias"], row["explicit_factors"])
    return Predictions(model, model.predict(*factors), set(rated))
