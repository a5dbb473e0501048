"""Instant personalisation: a viewer who rated films since the publish gets a list
folded in against the live movie factors on their next request.

The nightly run stays the authority: once it has trained on those ratings and
published, the viewer is no longer "pending" and gets the stored list again.
The fold-in itself is :mod:`moviesforyou.foldin` (the ALS user step in NumPy);
this module keeps the live publish's movie side in memory, loaded on the first
fold-in after each publish (at ml-25m's 59,047 movies and rank 50, about 50 MB
per worker process), and turns a folded-in viewer into the API's answer.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np

from moviesforyou import foldin
from serving import db

log = logging.getLogger(__name__)

#: ``source`` of a folded-in recommendation.
SOURCE = "als-live"


class LiveModels:
    """The live publish's fold-in model, one per worker process."""

    def __init__(self) -> None:
        self._publish_id: int | None = None
        self._model: foldin.Model | None = None
        self._genres: list[frozenset[str]] = []
        self._lock = asyncio.Lock()

    async def model(self, conn) -> tuple[foldin.Model | None, list[frozenset[str]], dict]:
        """(model, genres per movie row, publication) of the live publish; the model is
        None when the publish lacks the settings a fold-in needs."""
        live = await conn.fetchrow(db.FOLD_IN_SETTINGS)
        if live is None:
            return None, [], {}
        async with self._lock:
            if self._publish_id != live["publish_id"]:
                self._model, self._genres = await self._load(conn, live)
                self._publish_id = live["publish_id"]
        return self._model, self._genres, dict(live)

    @staticmethod
    async def _load(conn, live) -> tuple[foldin.Model | None, list[frozenset[str]]]:
        rows = await conn.fetch(db.FOLD_IN_MOVIES)
        model = foldin.Model.from_rows(rows, live)
        if model is None:
            log.info("publish %s has no fold-in settings: no live fold-ins", live["publish_id"])
            return None, []
        log.info("fold-in model of publish %s: %d movies", live["publish_id"], len(rows))
        return model, [frozenset(r["genres"]) for r in rows]


async def recommend(models: LiveModels, conn, user_id: int, dataset: str, k: int,
                    excluded: list[str]) -> tuple[int, bytes] | None:
    """(publish id, JSON answer) of a folded-in list, or None when the viewer's
    ratings give the model nothing to fold in (no rated movie has factors)."""
    model, genres, live = await models.model(conn)
    if model is None:
        return None
    history = await conn.fetch(db.VIEWER_HISTORY, user_id, dataset)
    rated = [r["movie_id"] for r in history]
    if not (model.rows(rated) >= 0).any():
        return None
    viewer = model.fold_in(rated, [r["rating"] for r in history])
    out = set(excluded)
    skip = np.array([bool(g & out) for g in genres]) if out else None
    top = model.top(viewer, rated, k, skip)
    if not len(top):
        return None
    catalogue = {r["movie_id"]: r for r in await conn.fetch(
        db.CATALOGUE_ROWS, [int(model.movie_ids[i]) for i in top])}
    listed = []
    for i in top:
        movie = catalogue.get(int(model.movie_ids[i]))
        if movie is not None:
            listed.append({
                "rank": len(listed) + 1, "movie_id": movie["movie_id"], "title": movie["title"],
                "year": movie["release_year"], "genres": list(movie["genres"]),
                "score": float(viewer.scores[i]),
                "predicted_rating": round(float(viewer.predicted[i]), 2), "source": SOURCE})
    body = {"user_id": user_id, "model_version": live["model_version"],
            "publish_id": live["publish_id"], "exclude_genres": excluded,
            "folded_in_ratings": len(history), "recommendations": listed}
    return live["publish_id"], json.dumps(body).encode()


async def viewer_predictions(models: LiveModels, conn, user_id: int, dataset: str,
                             pending: bool) -> tuple[foldin.Model, np.ndarray, set[int]] | None:
    """(model, predicted rating per model row, movies the viewer rated) for the search
    page: folded in when the viewer rated films since the publish (``pending``), else
    from their published factors, else the bias baseline; None without a fold-in model."""
    model, _, _ = await models.model(conn)
    if model is None:
        return None
    history = await conn.fetch(db.VIEWER_HISTORY, user_id, dataset)
    rated = {r["movie_id"] for r in history}
    if pending and rated:
        viewer = model.fold_in([r["movie_id"] for r in history], [r["rating"] for r in history])
        return model, viewer.predicted, rated
    row = await conn.fetchrow(db.USER_FACTORS, user_id)
    if row is None:
        return model, model.predict(0.0, None), rated
    return model, model.predict(row["bias"], row["explicit_factors"]), rated

