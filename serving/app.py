"""The MoviesForYou API and web page.

Run it with ``moviesforyou serve`` (or ``uvicorn serving.app:app``); the
OpenAPI page is at ``/docs``, the web page at ``/``. It reads the published
``recs`` tables as the read-only role (see ``serving/db.py`` for settings), so
it answers from the last good publish while a new one is being built; every
answer that carries recommendations names the ``model_version`` and
``publish_id`` that made it. The only writes, sign-up and ratings, go through
two narrow ``security definer`` functions of the warehouse.

This module builds the app: its state (settings, pool, rate limits, the fold-in
models, the answer cache, the exposure log, the stored lookups' batches), one router
per area (``serving/routes/``) and the two middlewares (:mod:`serving.middleware`).
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from moviesforyou.foundation.config import Settings
from serving import auth, db, live
from serving.cache import AnswerCache, following
from serving.exposures import ExposureLog, writing
from serving.lookups import StoredLists
from serving.middleware import LookupFastPath, ServerTiming
from serving.routes import catalogue, health, pages, recommendations, users

STATIC = Path(__file__).parent / "static"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings.from_env()  # the API's entry point builds the settings once
    app.state.settings = settings
    app.state.pool = await db.create_pool(settings)
    app.state.writes = auth.RateLimiter(settings.api.write_limit)
    app.state.live = live.LiveModels()
    app.state.stored = StoredLists(app.state.pool)
    try:
        cache = AnswerCache(settings.api.cache_size, settings.api.cache_ttl)
        exposures = ExposureLog(settings.api.exposure_buffer, settings.api.exposure_flush_seconds)
        async with following(cache, app.state.pool, settings.api.cache_seconds), \
                writing(exposures, app.state.pool):
            app.state.cache, app.state.exposures = cache, exposures
            # what start-up made (modules, routes, models) lives as long as the worker:
            # out of the collector's generations, a full collection does not walk it
            # while a lookup waits (benchmarks/api_load.py, the p99 latency)
            gc.freeze()
            yield
    finally:
        await app.state.pool.close()


app = FastAPI(
    title="MoviesForYou",
    version="1.0",
    summary="Personalised movie recommendations, refreshed nightly from MovieLens.",
    description=("Lookups on the published `recs` tables of the warehouse. Recommendation "
                 "answers carry the `model_version` and `publish_id` that produced them."),
    lifespan=lifespan,
)
app.mount("/static", StaticFiles(directory=STATIC), name="static")
for area in (catalogue, recommendations, users, pages, health):
    app.include_router(area.router)


@app.exception_handler(RequestValidationError)
async def readable_validation_error(request: Request, exc: RequestValidationError):
    """422 with one readable sentence per problem, plus FastAPI's structured list."""
    problems, errors = [], []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where}: {error.get('msg')}")
        errors.append({"loc": list(error.get("loc", ())), "msg": error.get("msg"),
                       "type": error.get("type"), "input": str(error.get("input"))[:200]})
    return JSONResponse(status_code=422, content={"detail": "; ".join(problems),
                                                  "errors": errors})


# the lookup's fast path inside, so that its answers carry Server-Timing too
app.add_middleware(LookupFastPath)
app.add_middleware(ServerTiming)
