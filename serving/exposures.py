"""What viewers were shown: the API's exposure log (``app.exposures``).

Every list the API serves (a stored list, a list folded in live, a cold-start list)
is recorded: the viewer, the time, the publish, the model version, the arm, the
source and the films in rank order. Recording appends one line of ``COPY`` text to
a list in memory, so a lookup never waits on the log; a background task writes what
has gathered every ``MFY_API_EXPOSURE_FLUSH_SECONDS`` (1 s), or as soon as
:data:`BATCH` lines wait, as one ``COPY``.

What a list showed is written as text once, when the list is made (:func:`exposure`),
and an answer the cache holds keeps it so. Each lookup then adds only its time and
viewer, and the buffer holds strings, which the garbage collector does not follow. A
buffer of tuples and lists lived long enough to reach the oldest generation, whose
full collections walk the whole heap while lookups wait: the likely cause of the log's
share of the p99 latency (reasoned, not profiled; docs/at-size.md has the figures).

Losing the log never fails a lookup. A write that fails (the warehouse down, the
table gone) is logged and its lines dropped; a buffer that reaches
``MFY_API_EXPOSURE_BUFFER`` lines drops new ones until a write gets through. Both
are counted in :meth:`ExposureLog.figures` (``/api/metrics``), which is how an
operator sees that the online measures of those hours are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from moviesforyou.foundation.experiments import CHAMPION

log = logging.getLogger(__name__)

#: ``app.exposures``' columns, in the order of a line's fields.
COLUMNS = ("shown_at", "user_id", "publish_id", "model_version", "arm", "source", "channel",
           "movie_ids")
#: Lines that make the writer go at once, without waiting for its next turn.
BATCH = 5_000
#: COPY's text format: what a field may not hold as it is.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(value) -> str:
    return "\\N" if value is None else str(value).translate(_ESCAPES)


def exposure(publish_id: int | None, model_version: str | None, source: str, movie_ids,
          arm: str = CHAMPION) -> str | None:
    """What a served list showed, as the end of its exposure's COPY line (the fields
    after the viewer); None for an empty list, which is not logged."""
    if not movie_ids:
        return None
    return (f"{_field(publish_id)}\t{_field(model_version)}\t{_field(arm)}\t{_field(source)}"
            f"\tapi\t{{{','.join(map(str, movie_ids))}}}\n")


class ExposureLog:
    """A worker's buffer of exposures and its counters (``capacity`` 0: no log)."""

    def __init__(self, capacity: int, every: float) -> None:
        self.capacity, self.every = capacity, every
        self._lines: list[str] = []
        self._wake = asyncio.Event()
        self._second, self._stamp = -1, ""
        self.written = self.dropped = self.failed_writes = 0

    def record(self, user_id: int, what: str | None) -> None:
        """Note that the viewer was just shown ``what`` (:func:`exposure`); never raises,
        never waits."""
        if not self.capacity or what is None:
            return
        if len(self._lines) >= self.capacity:
            self.dropped += 1
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # the date and time to the second, once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        self._lines.append(
            f"{self._stamp}.{int((now - second) * 1_000_000):06d}+00\t{user_id}\t{what}")
        if len(self._lines) >= BATCH:
            self._wake.set()

    def record_answer(self, user_id: int, body: bytes | str | dict, source: str,
                      arm: str = CHAMPION) -> None:
        """Note a list from its JSON answer (the paths that make a list now: rare enough
        to read it back)."""
        answer = body if isinstance(body, dict) else json.loads(body)
        self.record(user_id, exposure(answer.get("publish_id"), answer.get("model_version"),
                                      source, [m["movie_id"] for m in
                                               answer.get("recommendations", ())], arm))

    async def flush(self, pool) -> int:
        """Write what is buffered as one COPY; returns the lines written (a write that
        fails drops them, counted)."""
        lines, self._lines = self._lines, []
        if not lines:
            return 0
        try:
            await pool.copy_to_table("exposures", schema_name="app", columns=COLUMNS,
                                     # a buffer: asyncpg reads bytes as a file's path
                                     source=memoryview("".join(lines).encode()),
                                     format="text",
                                     timeout=30)
        except Exception as exc:  # the lookups go on without their log
            self.failed_writes += 1
            self.dropped += len(lines)
            log.warning("exposure log: %d exposure(s) not written: %s", len(lines), exc)
            return 0
        self.written += len(lines)
        return len(lines)

    async def follow(self, pool) -> None:
        """Write the buffer every ``every`` seconds, or sooner when a batch waits."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)
            self._wake.clear()
            await self.flush(pool)

    def figures(self) -> dict:
        return {"enabled": bool(self.capacity), "written": self.written,
                "buffered": len(self._lines), "dropped": self.dropped,
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
