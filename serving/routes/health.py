"""Liveness, and what is being served."""

from __future__ import annotations

import datetime as dt
import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving import db
from serving.deps import pool

router = APIRouter(tags=["health"])


@router.get("/api/health")
async def health(request: Request):
    """Liveness plus what is being served: model version, publish time, data freshness."""
    async with pool(request).acquire() as conn:
        live = await conn.fetchrow(db.PUBLICATION)
        if live is None:
            return JSONResponse(status_code=503, content={
                "status": "no recommendations published yet"})
        extra = await conn.fetchrow(db.HEALTH, live["publish_id"], live["dataset"])
    now = dt.datetime.now(dt.UTC)
    published_at = extra["published_at"]
    return {"status": "ok", "dataset": live["dataset"], "model_name": live["model_name"],
            "model_version": live["model_version"], "publish_id": live["publish_id"],
            "mlflow_run_id": live["mlflow_run_id"], "published_at": published_at,
            "published_hours_ago": (None if published_at is None
                                    else round((now - published_at).total_seconds() / 3600, 2)),
            "recommendations_per_user": live["recommendations_per_user"],
            "data_freshness": {"ratings_through": live["ratings_through"],
                               "source_loaded_at": live["source_loaded_at"],
                               "last_source_check_at": extra["last_source_check_at"],
                               "last_app_rating_at": extra["last_app_rating_at"]}}


@router.get("/api/metrics")
async def metrics(request: Request):
    """This worker's figures since it started: its answer cache (hits, misses, hit
    rate), its exposure log (written, buffered, dropped) and its batches of stored
    lookups (``serving/lookups.py``: batches, lookups, the mean batch). Each worker answers
    for itself: ask a few times to see them all (``pid`` says which)."""
    state = request.app.state
    return {"pid": os.getpid(), "cache": state.cache.figures(),
            "exposures": state.exposures.figures(), "stored_lookups": state.stored.figures()}
