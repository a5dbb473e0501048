"""What viewers were shown: the API's exposure log (``app.exposures``).

Every list the API serves (a stored list, a list folded in live, a cold-start list)
is recorded: the viewer, the time, the publish, the model version, the arm, the
source and the films in rank order. Recording is an append to a list in memory, so
a lookup never waits on the log; a background task writes what has gathered every
``MFY_API_EXPOSURE_FLUSH_SECONDS`` (1 s), or as soon as :data:`BATCH` rows wait,
with one ``COPY`` per :data:`CHUNK` rows.

Losing the log never fails a lookup. A write that fails (the warehouse down, the
table gone) is logged and its rows dropped; a buffer that reaches
``MFY_API_EXPOSURE_BUFFER`` rows drops new ones until a write gets through. Both
are counted in :meth:`ExposureLog.figures` (``/api/metrics``), which is how an
operator sees that the online measures of those hours are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time

from moviesforyou.foundation.experiments import CHAMPION

log = logging.getLogger(__name__)

#: ``app.exposures``' columns, in the order of a recorded row.
COLUMNS = ("shown_at", "user_id", "publish_id", "model_version", "arm", "source", "channel",
           "movie_ids")
#: Rows that make the writer go at once, without waiting for its next turn.
BATCH = 5_000
#: Rows per COPY of a write.
CHUNK = 500


class ExposureLog:
    """A worker's buffer of exposures and its counters (``capacity`` 0: no log)."""

    def __init__(self, capacity: int, every: float) -> None:
        self.capacity, self.every = capacity, every
        self._rows: list[tuple] = []
        self._wake = asyncio.Event()
        self.written = self.dropped = self.failed_writes = 0

    def record(self, user_id: int, publish_id: int | None, model_version: str | None,
               source: str, movie_ids, arm: str = CHAMPION) -> None:
        """Note one served list (``movie_ids`` in rank order); never raises, never waits."""
        if not self.capacity or not movie_ids:
            return
        if len(self._rows) >= self.capacity:
            self.dropped += 1
            return
        self._rows.append((time.time(), user_id, publish_id, model_version, arm, source,
                           movie_ids))
        if len(self._rows) >= BATCH:
            self._wake.set()

    def record_answer(self, user_id: int, body: bytes | str | dict, source: str,
                      arm: str = CHAMPION) -> None:
        """Note a list from its JSON answer (the paths that make a list now: rare enough
        to read it back)."""
        answer = body if isinstance(body, dict) else json.loads(body)
        self.record(user_id, answer.get("publish_id"), answer.get("model_version"), source,
                    [m["movie_id"] for m in answer.get("recommendations", ())], arm)

    async def flush(self, pool) -> int:
        """Write what is buffered, :data:`CHUNK` rows per COPY; returns the rows written
        (a chunk that fails is dropped and counted). In chunks, so that the lookups in
        flight are answered between two of them: preparing and encoding a second's
        exposures at once held the event loop long enough to show in the p99 latency."""
        rows, self._rows = self._rows, []
        written = 0
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            records = [(dt.datetime.fromtimestamp(at, dt.UTC), user, publish, version, arm,
                        source, "api", list(movies))
                       for at, user, publish, version, arm, source, movies in chunk]
            try:
                await pool.copy_records_to_table("exposures", schema_name="app",
                                                 columns=COLUMNS, records=records, timeout=30)
            except Exception as exc:  # the lookups go on without their log
                self.failed_writes += 1
                self.dropped += len(chunk)
                log.warning("exposure log: %d exposure(s) not written: %s", len(chunk), exc)
                continue
            written += len(chunk)
        self.written += written
        return written

    async def follow(self, pool) -> None:
        """Write the buffer every ``every`` seconds, or sooner when a batch waits."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)
            self._wake.clear()
            await self.flush(pool)

    def figures(self) -> dict:
        return {"enabled": bool(self.capacity), "written": self.written,
                "buffered": len(self._rows), "dropped": self.dropped,
                "failed_writes": self.failed_writes}


@contextlib.asynccontextmanager
async def writing(exposures: ExposureLog, pool):
    """The writer as a background task while the app runs; what is left is written
    when it stops."""
    task = asyncio.create_task(exposures.follow(pool))
    try:
        yield exposures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await exposures.flush(pool)
