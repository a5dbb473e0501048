"""The API's two pure ASGI middlewares: ``Server-Timing`` on every answer, and the
lookup's fast path past FastAPI's routing for the one request that carries the load.
"""

from __future__ import annotations

import re
import time

import orjson

from serving.exposures import exposure


class ServerTiming:
    """Pure ASGI middleware (no per-request task, unlike ``@router.middleware``) that adds
    ``Server-Timing: app;dur=<ms>``, the time from the request to its response headers,
    which the browser's developer tools show and ``benchmarks/page_latency.py`` reads."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - start) * 1000
                message["headers"] = [*message.get("headers", []),
                                      (b"server-timing", f"app;dur={spent:.2f}".encode())]
            await send(message)

        return await self.app(scope, receive, timed)


class LookupFastPath:
    """Pure ASGI middleware for the one request that carries the load,
    ``GET /api/users/{id}/recommendations`` with at most ``k`` in its query: the same
    answer as :func:`recommend` (the stored rows in batches of viewers,
    :mod:`serving.lookups`; the answer written by orjson) without FastAPI's routing, validation
    and response objects, which cost more than the lookup itself
    (``benchmarks/api_load.py``). Anything else, an invalid value
    included, and any answer that is not a stored personal list (newcomers, viewers
    with ratings since the publish, errors) goes through :func:`recommend`."""

    PATH = re.compile(rb"/api/users/([1-9][0-9]{0,9})/recommendations")
    QUERY = re.compile(rb"(?:k=([1-9][0-9]{0,2}))?")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        body = None
        if scope["type"] == "http" and scope["method"] == "GET":
            path = self.PATH.fullmatch(scope.get("raw_path") or scope["path"].encode())
            query = self.QUERY.fullmatch(scope.get("query_string", b""))
            if path and query:
                user_id, k = int(path[1]), int(query[1] or 10)
                if user_id <= 2_147_483_647 and k <= 100:
                    body = await self._stored(scope["app"].state, user_id, k)
        if body is None:
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _stored(state, user_id: int, k: int) -> bytes | None:
        key = (user_id, k, ())
        cached = state.cache.get(key)
        if cached is not None:
            body, shown = cached
            state.exposures.record(user_id, shown)
            return body
        rows = await state.stored.lookup(user_id, k)  # in a batch (serving/lookups.py)
        if not rows or len(rows) < k or rows[0]["pending"] \
                or any(r["source"] != "als" for r in rows):
            # failed (recommend() has the error handling), short (recommend() tops
            # up), folded in, or not a personal list
            return None
        first = rows[0]
        body = stored_answer(user_id, rows)
        shown = exposure(first["publish_id"], first["model_version"], "stored",
                         [r["movie_id"] for r in rows], first["arm"])
        state.cache.put(key, first["publish_id"], body, shown)
        state.exposures.record(user_id, shown)
        return body


def stored_answer(user_id: int, rows) -> bytes:
    """The JSON answer of a stored list's rows (``db.STORED_ROWS_MANY``): the shape
    ``db.RECOMMEND_JSON`` gives, written by orjson."""
    first = rows[0]
    return orjson.dumps({
        "user_id": user_id, "model_version": first["model_version"],
        "publish_id": first["publish_id"], "exclude_genres": [],
        "recommendations": [
            {"rank": r["rank"], "movie_id": r["movie_id"], "title": r["title"],
             "year": r["release_year"], "genres": r["genres"], "score": r["score"],
             "predicted_rating": r["predicted_rating"], "source": r["source"]}
            for r in rows]})
