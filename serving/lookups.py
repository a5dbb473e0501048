"""The stored lists of many viewers in one statement: the lookup fast path's batches.

Under load most of an uncached lookup's cost is not Postgres finding ten rows but
the round trip around it: a message each way through the kernel, waking a backend,
in the API and in Postgres (``docs/benchmarks.md``, "Where the lookup's time went").
So the fast path (:class:`serving.middleware.LookupFastPath`) does not send one
statement per request. Each request joins the current batch and waits for its
answer; the batch goes as one statement (``db.STORED_ROWS_MANY``: the viewers' ids
as one array) when the event loop turns, or, while :data:`IN_FLIGHT` batches are
already out, when one of them comes back. On an idle API a batch is one request and
goes at once, so nobody waits for company; at 32 connections batches gather a dozen
requests, and every request in them shares one round trip.

A failed statement answers every request of its batch with None, and the fast path
hands those to the full handler, which has its own error handling.
"""

from __future__ import annotations

import asyncio
import logging

from serving import db

log = logging.getLogger(__name__)

#: Batches out at once: enough to keep Postgres's cores busy while the API decodes
#: the last answer and gathers the next batch (two cores here).
IN_FLIGHT = 2


class StoredLists:
    """A worker's batches of stored-list lookups (``app.state.stored``)."""

    def __init__(self, pool, in_flight: int = IN_FLIGHT,
                 statement: str = db.STORED_ROWS_MANY) -> None:
        self.pool, self.in_flight, self.statement = pool, in_flight, statement
        self._waiting: dict[int, list[tuple[int, asyncio.Future]]] = {}
        self._out = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()  # the event loop keeps only weak references
        self.batches = self.lookups = 0

    def lookup(self, user_id: int, k: int) -> asyncio.Future:
        """The first ``k`` rows of the viewer's stored list (``db.STORED_ROWS_MANY``,
        fewer when it is short, none without one), or None when the statement failed."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.setdefault(user_id, []).append((k, answer))
        if not self._scheduled and self._out < self.in_flight:
            self._scheduled = True
            loop.call_soon(self._send)
        return answer

    def _send(self) -> None:
        self._scheduled = False
        if not self._waiting or self._out >= self.in_flight:
            return  # a batch coming back sends what has gathered since
        waiting, self._waiting = self._waiting, {}
        self._out += 1
        task = asyncio.ensure_future(self._ask(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, waiting: dict[int, list[tuple[int, asyncio.Future]]]) -> None:
        try:
            k = max(k for asks in waiting.values() for k, _ in asks)
            try:
                async with self.pool.acquire() as conn:
                    rows = await conn.fetch(self.statement, list(waiting), k)
            except Exception as exc:  # the full handler answers them
                log.debug("stored lists: batch of %d failed: %s", len(waiting), exc)
                rows = None
            self.batches += 1
            self.lookups += sum(len(asks) for asks in waiting.values())
            lists: dict[int, list] = {}
            for row in rows or ():
                lists.setdefault(row["user_id"], []).append(row)
            for user_id, asks in waiting.items():
                got = lists.get(user_id, [])
                for k, answer in asks:
                    if not answer.done():  # its request may have been cancelled
                        answer.set_result(None if rows is None else got[:k])
        finally:
            self._out -= 1
            self._send()

    def figures(self) -> dict:
        """Batches sent and lookups answered since the worker started (``/api/metrics``)."""
        return {"batches": self.batches, "lookups": self.lookups,
                "mean_batch": round(self.lookups / self.batches, 2) if self.batches else None}
