"""What viewers were shown and what they did next, on the real published ml-100k.

The API logs every list it serves (app.exposures, written in batches by COPY);
losing the log never fails a lookup; recs.recommend_logged logs lookups made in SQL;
the online measures (int_exposure_outcomes, mart_online_measures) agree with counts
made here by hand, and reach the model version in MLflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import asyncpg
import psycopg2
import pytest

from conftest import call, execute, query
from moviesforyou.foundation import warehouse
from serving.exposures import ExposureLog, exposure

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def logged_since(wh, since, users, count: int, timeout: float = 15) -> list[tuple]:
    """The exposures of ``users`` since ``since``, once there are ``count`` (the API
    writes every second)."""
    deadline = time.time() + timeout
    while True:
        rows = query(wh, """select user_id, publish_id, model_version, arm, source, channel,
                                   movie_ids
                            from app.exposures where shown_at >= %s and user_id = any(%s)
                            order by shown_at""", (since, list(users)))
        if len(rows) >= count or time.time() > deadline:
            return rows
        time.sleep(0.3)


def shown(answer: dict) -> list[int]:
    return [m["movie_id"] for m in answer["recommendations"]]


def test_the_api_logs_every_list_it_serves(api_server, wh):
    since = query(wh, "select now()")[0][0]
    # k=7: a length no earlier test asks for, so that the first answer is not one the
    # cache kept from an earlier publish (an experiment's, until the cache sees the swap)
    answers = [call(api_server, "/api/users/1/recommendations?k=7")[1],  # the fast path
               call(api_server, "/api/users/1/recommendations?k=7")[1],  # from the cache
               call(api_server, "/api/users/2/recommendations?k=5&exclude_genres=Drama")[1]]
    status, newcomer = call(api_server, "/api/users", {"age": 30, "gender": "F",
                                                       "preferred_genres": ["Comedy"]})
    assert status == 201
    rows = logged_since(wh, since, [1, 2, newcomer["user_id"]], 4)
    assert len(rows) == 4, rows
    expected = [(1, "stored", answers[0]), (1, "stored", answers[1]),
                (2, "stored", answers[2]), (newcomer["user_id"], "cold", newcomer)]
    for row, (user, source, answer) in zip(rows, expected, strict=True):
        assert row == (user, answer["publish_id"], answer["model_version"], "champion", source,
                       "api", shown(answer)), row
    status, figures = call(api_server, "/api/metrics")
    assert status == 200
    assert figures["exposures"]["written"] >= 4 and figures["exposures"]["dropped"] == 0
    assert figures["cache"]["hits"] >= 1 and 0 < figures["cache"]["hit_rate"] <= 1
    batched = figures["stored_lookups"]  # user 1's first lookup at least, in a batch
    assert batched["lookups"] >= batched["batches"] >= 1 and batched["mean_batch"] >= 1


def test_losing_the_log_never_fails_a_lookup(api_server, wh, published):
    reader = published.reader_role
    before = call(api_server, "/api/metrics")[1]["exposures"]
    execute(wh, f"revoke insert on app.exposures from {reader}")
    try:
        for user in range(10, 30):  # every one asks Postgres, and each is logged
            status, answer = call(api_server, f"/api/users/{user}/recommendations?k=5")
            assert status == 200 and len(answer["recommendations"]) == 5
        deadline = time.time() + 15
        while (after := call(api_server, "/api/metrics")[1]["exposures"])["failed_writes"] \
                == before["failed_writes"]:
            assert time.time() < deadline, after
            time.sleep(0.3)
        assert after["dropped"] >= before["dropped"] + 1
    finally:
        execute(wh, f"grant insert on app.exposures to {reader}")
    # the log goes on once it can write again
    since = query(wh, "select now()")[0][0]
    status, answer = call(api_server, "/api/users/31/recommendations?k=5")
    assert status == 200
    assert [r[-1] for r in logged_since(wh, since, [31], 1)] == [shown(answer)]


def test_the_log_writes_each_field_as_it_was_shown(published, wh):
    """The log's COPY lines read back as the lists were recorded: a missing publish
    and version as nulls, text COPY would misread escaped, the time to the microsecond."""
    viewers = [910_001, 910_002, 910_003]

    async def write() -> tuple[int, float, dict]:
        pool = await asyncpg.create_pool(warehouse.url(published), min_size=1, max_size=1)
        try:
            log = ExposureLog(capacity=10, every=60)
            before = time.time()
            log.record(viewers[0], exposure(7, "12", "stored", [5, 3, 9]))
            log.record(viewers[1], exposure(None, None, "cold", (1,), arm="challenger"))
            log.record(viewers[2], exposure(8, "v\\1\t2\nx", "live", [4]))
            log.record(viewers[2], exposure(8, "3", "live", []))  # an empty list: not logged
            return await log.flush(pool), before, log.figures()
        finally:
            await pool.close()

    try:
        written, before, figures = asyncio.run(write())
        rows = query(wh, """select user_id, publish_id, model_version, arm, source, channel,
                                   movie_ids, extract(epoch from shown_at)::float8
                            from app.exposures where user_id = any(%s) order by user_id""",
                     (viewers,))
    finally:
        execute(wh, "delete from app.exposures where user_id = any(%s)", (viewers,))
    assert written == 3 and figures["written"] == 3 and figures["buffered"] == 0
    assert [r[:7] for r in rows] == [
        (viewers[0], 7, "12", "champion", "stored", "api", [5, 3, 9]),
        (viewers[1], None, None, "challenger", "cold", "api", [1]),
        (viewers[2], 8, "v\\1\t2\nx", "champion", "live", "api", [4])]
    assert all(before <= r[7] <= time.time() for r in rows), (before, rows)


def test_a_lookup_in_sql_can_be_logged(published, wh):
    since = query(wh, "select now()")[0][0]
    with contextlib.closing(psycopg2.connect(warehouse.reader_url(published))) as reader:
        logged = query(reader, "select * from recs.recommend_logged(3, 5)")
        plain = query(reader, "select * from recs.recommend(3, 5)")
    assert logged == plain and len(plain) == 5
    rows = logged_since(wh, since, [3], 1)
    assert [(r[4], r[5], r[6]) for r in rows] == [("stored", "sql", [r[1] for r in plain])]


#: Viewers of the hand-counted day: ids no release user has.
V = [900_001, 900_002, 900_003, 900_004, 900_005]


def test_the_online_measures_match_counts_by_hand(published, wh):
    from moviesforyou.orchestration import freshness
    from moviesforyou.transformation import transform
    from spark_jobs import registry

    (publish_id, version), = query(wh, "select publish_id, model_version from recs.publication")
    day = dt.date.today() - dt.timedelta(days=10)
    at = dt.datetime.combine(day, dt.time(10), dt.UTC)
    hour = dt.timedelta(hours=1)
    exposures = [  # viewer, time, source, films in rank order
        (V[0], at, "stored", [50, 172, 181, 1, 2, 3, 4, 5, 6, 7]),
        (V[0], at + 2 * hour, "stored", [50, 172, 181, 1, 2, 3, 4, 5, 6, 7]),  # same day
        (V[1], at, "stored", list(range(100, 160))),
        (V[2], at, "cold", [1, 2, 3]),
        (V[3], at, "stored", [11, 12, 13]),
        (V[4], at, "stored", [9, 246, 10]),
    ]
    ratings = [  # viewer, film, stars, when
        (V[0], 172, 5, at + hour),  # shown at rank 2: a liked hit at 10
        (V[0], 999, 3, at + 1.5 * hour),  # not shown
        (V[1], 129, 2, at + 24 * hour),  # rank 30: a hit at 50 only, not liked
        (V[3], 11, 5, at - hour),  # before the list: not its outcome
        (V[4], 268, 4, at + 48 * hour),  # 268 is Chasing Amy's other id (246, rank 2)
        (V[4], 9, 5, at + 8 * 24 * hour),  # after the 7-day window
    ]
    try:
        with wh, wh.cursor() as cur:
            cur.executemany("""insert into app.exposures (shown_at, user_id, publish_id,
                                   model_version, source, movie_ids)
                               values (%s, %s, %s, %s, %s, %s)""",
                            [(t, u, publish_id, version, s, m) for u, t, s, m in exposures])
            cur.executemany("""insert into app.ratings (dataset, user_id, movie_id, rating,
                                   rated_at) values ('ml-100k', %s, %s, %s, %s)""",
                            [(u, m, r, t) for u, m, r, t in ratings])
        transform.run_dbt(published, ["build", "--select", "stg_app__exposures+"])
        outcomes = query(wh, """select user_id, source, hit_10, hit_50, liked_hit_10,
                                       new_ratings, new_ratings_of_shown, shown_rank_sum,
                                       window_closed
                                from intermediate.int_exposure_outcomes
                                where user_id = any(%s) order by user_id""", (V,))
        assert outcomes == [
            (V[0], "stored", True, True, True, 2, 1, 2, True),
            (V[1], "stored", False, True, False, 1, 1, 30, True),
            (V[2], "cold", False, False, False, 0, 0, 0, True),
            (V[3], "stored", False, False, False, 0, 0, 0, True),
            (V[4], "stored", True, True, True, 1, 1, 2, True),
        ]
        stored = query(wh, """select exposed_viewers, hit_viewers_10, hit_rate_10,
                                     hit_rate_10_low, hit_rate_10_high, hit_viewers_50,
                                     liked_hit_viewers_10, new_ratings, new_ratings_of_shown,
                                     shown_share, shown_mean_rank, liked_ratings,
                                     liked_ratings_of_shown, liked_shown_mean_rank
                              from marts.mart_online_measures
                              where shown_on = %s and source = 'stored'""", (day,))
        # Wilson's 95% interval of 2 in 4, worked by hand: (0.5 + z²/8 ± z·√(1/16 +
        # z²/64)) / (1 + z²/4) with z = 1.96
        assert stored == [(4, 2, 0.5, pytest.approx(0.1500357, abs=1e-6),
                           pytest.approx(0.8499643, abs=1e-6), 3, 2, 4, 3, 0.75,
                           pytest.approx(34 / 3), 2, 2, 2.0)]
        (cold,), = query(wh, """select exposed_viewers from marts.mart_online_measures
                                where shown_on = %s and source = 'cold'""", (day,))
        assert cold == 1

        # the day's figures, over its sources, on the model version in MLflow
        figures = dict(freshness.online_measures(published)[version])[day]
        assert figures["hit_rate_10"] == pytest.approx(2 / 5)
        assert figures["shown_share"] == pytest.approx(3 / 4)
        assert registry.log_online_measures(published, {version: [(day, figures)]}) >= 4
        client = registry.configure(published)
        run_id = client.get_model_version(registry.model_name(published), version).run_id
        history = client.get_metric_history(run_id, "online_hit_rate_10")
        assert [(m.step, m.value) for m in history if m.step == day.toordinal()] == [
            (day.toordinal(), pytest.approx(2 / 5))]

        # kept MFY_EXPOSURE_RETENTION_DAYS (90): an exposure older than that goes
        execute(wh, """insert into app.exposures (shown_at, user_id, publish_id, source,
                           movie_ids) values (now() - interval '91 days', %s, %s, 'cold',
                           '{1}')""", (V[0], publish_id))
        assert freshness.prune_exposures(published) == 1
        assert query(wh, "select count(*) from app.exposures where user_id = %s", (V[0],)) \
            == [(2,)]
    finally:
        execute(wh, "delete from app.exposures where user_id = any(%s)", (V,))
        execute(wh, "delete from app.ratings where user_id = any(%s)", (V,))
