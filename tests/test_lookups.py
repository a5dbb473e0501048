"""The lookup's fast path: the stored lists of many viewers in one statement
(``serving/lookups.py``), answering as the full handler does, on the published
ml-100k model."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import asyncpg
import pytest

from conftest import call, query
from moviesforyou.foundation import warehouse
from serving.lookups import StoredLists

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _batch(published, users: list[tuple[int, int]], **options):
    """``users`` ((user, k) pairs) looked up in one turn of the loop; the answers and
    the lookups' figures."""
    pool = await asyncpg.create_pool(warehouse.url(published), min_size=1, max_size=2)
    try:
        stored = StoredLists(pool, **options)
        answers = await asyncio.gather(*(stored.lookup(u, k) for u, k in users))
        return answers, stored.figures()
    finally:
        await pool.close()


def test_lookups_asked_together_go_in_one_statement(published, wh):
    """Twenty lookups (one viewer twice, with two lengths; one without a list) in one
    turn of the event loop: one batch, and each gets its own viewer's first k stored
    rows, in rank order, as recs.recommend gives them (a viewer who rated since the
    publish, if another test made one, is ``pending``: the handler folds them in)."""
    users = [(u, 10) for u in range(1, 18)] + [(5, 3), (900, 50), (99_999_999, 10)]
    answers, figures = asyncio.run(_batch(published, users))
    assert figures == {"batches": 1, "lookups": 20, "mean_batch": 20.0}
    assert answers[-1] == []
    for (user, k), rows in zip(users[:-1], answers[:-1], strict=True):
        assert {r["user_id"] for r in rows} == {user}
        assert [r["rank"] for r in rows] == list(range(1, k + 1))
        rated_since = query(wh, "select exists (select 1 from app.ratings where user_id = %s)",
                            (user,))[0][0]
        assert rows[0]["pending"] == rated_since
        if not rated_since:
            assert [(r["movie_id"], r["predicted_rating"]) for r in rows] == query(
                wh, "select movie_id, round(predicted_rating::numeric, 2)::float8 "
                    "from recs.recommend(%s, %s)", (user, k))


def test_a_failed_batch_leaves_its_lookups_to_the_handler(published):
    """A statement that fails answers every lookup of its batch with None (the fast
    path then hands them to the full handler), without raising."""
    answers, figures = asyncio.run(_batch(
        published, [(1, 10), (2, 10)], statement="select * from recs.no_such_table"))
    assert answers == [None, None] and figures["batches"] == 1


def test_concurrent_requests_get_their_own_answers(api_server):
    """Forty requests at once over HTTP, for twenty viewers: every answer is its
    viewer's, as the full handler gives it."""
    answers: dict[tuple[int, int], bytes] = {}

    def ask(user: int, round_: int) -> None:
        with urllib.request.urlopen(f"{api_server}/api/users/{user}/recommendations?k=10",
                                    timeout=30) as response:
            answers[user, round_] = response.read()

    threads = [threading.Thread(target=ask, args=(u, r)) for u in range(100, 120)
               for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (user, _), body in answers.items():
        full = call(api_server, f"/api/users/{user}/recommendations?k=10&via=handler")[1]
        assert json.loads(body) == full
    assert len(answers) == 40


def test_the_lookups_fast_path_answers_as_the_full_handler(api_server):
    """``/recommendations?k=`` skips FastAPI (serving.app.LookupFastPath); any other
    query (an unknown parameter here) goes through the full handler: the same answer
    (the fast path's JSON is written by orjson, the handler's by Postgres).
    What the fast path does not answer itself falls through: invalid values get the
    handler's 422, a user without recommendations its 404."""
    def raw(path: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(api_server + path, timeout=30) as response:
                return response.status, response.read(), response.headers["Server-Timing"]
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers["Server-Timing"]

    for user, k in ((1, ""), (13, "?k=7"), (943, "?k=100")):
        fast = raw(f"/api/users/{user}/recommendations{k}")
        full = raw(f"/api/users/{user}/recommendations{k}{'&' if k else '?'}via=handler")
        assert fast[0] == full[0] == 200
        assert json.loads(fast[1]) == json.loads(full[1])
        assert len(json.loads(fast[1])["recommendations"]) == int(k[3:] or 10)
        assert json.loads(fast[1])["user_id"] == user and fast[2].startswith("app;dur=")
    assert raw("/api/users/1/recommendations?k=101")[0] == 422
    assert raw("/api/users/1/recommendations?k=0")[0] == 422
    assert raw("/api/users/99999999/recommendations")[0] == 404


