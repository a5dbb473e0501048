"""A small per-process cache of recommendation answers, bound to the live publish.

The recommendations change once a night, so the API keeps the JSON answers it
has built (``MFY_API_CACHE_SIZE`` entries, 50,000 by default; 0 turns it off).
Each entry is a whole answer from one publish, so a cached answer is never a
mix of versions. The cache empties itself when the live ``publish_id`` changes
(a background task reads it every ``MFY_API_CACHE_SECONDS``, 1 s, so a new
publish is served at most that long after its swap) and an entry lives at most
``MFY_API_CACHE_TTL`` seconds (60), which bounds how long another worker may
still offer a movie a user has just rated through the API (the worker that
took the rating forgets that user at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

log = logging.getLogger(__name__)


#: What a cached answer showed, for the exposure log (``serving.exposures.exposure``).
Shown = str | None


class AnswerCache:
    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self.publish_id: int | None = None
        self._entries: OrderedDict[tuple, tuple[float, bytes, Shown]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> tuple[bytes, Shown] | None:
        """The answer and what it showed, while it is fresh."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return entry[1], entry[2]

    def put(self, key: tuple, publish_id: int, body: bytes, shown: Shown) -> None:
        if not self.size or publish_id != self.publish_id:
            return  # only answers from the publish we know is live
        self._entries[key] = (time.monotonic() + self.ttl, body, shown)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def figures(self) -> dict:
        """This worker's hit rate since it started (``/api/metrics``)."""
        asked = self.hits + self.misses
        return {"size": self.size, "entries": len(self._entries), "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / asked, 4) if asked else None}

    def forget_user(self, user_id: int) -> None:
        for key in [k for k in self._entries if k[0] == user_id]:
            del self._entries[key]

    def set_publish(self, publish_id: int | None) -> None:
        if publish_id != self.publish_id:
            self._entries.clear()
            self.publish_id = publish_id

    async def refresh(self, pool) -> None:
        """Read the live publish id now."""
        self.set_publish(await pool.fetchval(
            "select case when to_regclass('recs.publication') is not null "
            "then (select publish_id from recs.publication) end"))

    async def follow(self, pool, every: float) -> None:
        """Keep ``publish_id`` current (run as a background task)."""
        while True:
            try:
                await self.refresh(pool)
            except Exception as exc:  # the API keeps answering from Postgres
                log.warning("cache: cannot read the live publish: %s", exc)
                self.set_publish(None)
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def following(cache: AnswerCache, pool, every: float):
    try:  # the live release before the first request, not a second later
        await cache.refresh(pool)
    except Exception as exc:
        log.warning("cache: cannot read the live publish: %s", exc)
    task = asyncio.create_task(cache.follow(pool, every))
    try:
        yield cache
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
