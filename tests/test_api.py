"""The serving API as a real process on a published ml-100k model, and its web page."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import psycopg2
import psycopg2.errors
import pytest

from conftest import call, query, running_api
from moviesforyou.foundation import warehouse
from moviesforyou.orchestration import recs_publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_movies_are_paginated_ten_per_page_with_genres(api_server):
    status, page = call(api_server, "/api/movies?page=1")
    assert status == 200
    assert page["total"] == 1663 and page["pages"] == 167 and len(page["movies"]) == 10
    assert page["movies"][0] == page["movies"][0] | {"movie_id": 1, "title": "Toy Story",
                                                     "year": 1995}
    assert set(page["movies"][0]["genres"]) == {"Animation", "Children", "Comedy"}
    _, last = call(api_server, "/api/movies?page=167")
    assert len(last["movies"]) == 3
    _, westerns = call(api_server, "/api/movies?genre=Western")
    assert all("Western" in m["genres"] for m in westerns["movies"])


def test_movie_details_and_unknown_ids(api_server):
    status, movie = call(api_server, "/api/movies/50")
    assert status == 200 and movie["title"] == "Star Wars" and movie["rating_count"] == 583
    assert call(api_server, "/api/movies/99999")[0] == 404
    assert call(api_server, "/api/users/99999/ratings")[0] == 404
    assert call(api_server, "/api/users/99999/recommendations")[0] == 404
    assert call(api_server, "/api/movies/99999/similar")[0] == 404


def test_bad_parameters_get_a_readable_422(api_server):
    status, answer = call(api_server, "/api/users/1/recommendations?k=1000")
    assert status == 422 and answer["detail"].startswith("query.k: ")
    status, answer = call(api_server, "/api/movies/abc")
    assert status == 422 and "path.movie_id" in answer["detail"]
    status, answer = call(api_server, "/api/movies?page=0")
    assert status == 422
    status, answer = call(api_server, "/api/users", {"age": 300, "gender": "X"})
    assert status == 422 and "age" in answer["detail"] and "gender" in answer["detail"]
    status, answer = call(api_server, "/api/users/1/ratings", {"ratings": [
        {"movie_id": 1, "rating": 3.3}]})
    assert status == 422 and "half-star" in answer["detail"]


def test_hostile_input_stays_data(api_server, wh):
    hostile = "x'); drop table recs.user_recommendations; --"
    status, answer = call(api_server, "/api/movies/search?q=" + urllib.parse.quote(hostile))
    assert status == 200
    status, answer = call(api_server, "/api/users/1/recommendations?exclude_genres="
                          + urllib.parse.quote(hostile))
    assert status == 422 and "exclude_genres: unknown genre(s) x')" in answer["detail"]
    assert query(wh, "select count(*) > 0 from recs.user_recommendations") == [(True,)]


def test_unknown_excluded_genre_is_refused_with_the_known_ones(api_server):
    status, answer = call(api_server, "/api/users/1/recommendations?exclude_genres=Drama,Foo")

    assert status == 422
    assert answer["detail"].startswith("exclude_genres: unknown genre(s) Foo; known: Action, ")
    assert "Drama" in answer["detail"].split("known: ")[1]


def test_user_ratings(api_server):
    status, answer = call(api_server, "/api/users/1/ratings")
    # 272 ratings in the release, one of them a second rating of a film listed twice
    assert status == 200 and answer["total"] == 271 and len(answer["ratings"]) == 10
    assert {"movie_id", "title", "rating", "rated_at", "pending"} <= set(answer["ratings"][0])


def test_recommendations_for_a_user(api_server, wh):
    status, answer = call(api_server, "/api/users/1/recommendations?k=15&exclude_genres=Drama"
                                      "&exclude_genres=Comedy,Romance")
    assert status == 200
    recs = answer["recommendations"]
    assert [r["rank"] for r in recs] == list(range(1, 16))
    assert all(not {"Drama", "Comedy", "Romance"} & set(r["genres"]) for r in recs)
    assert answer["exclude_genres"] == ["Comedy", "Drama", "Romance"]
    live = query(wh, "select publish_id, model_version from recs.publication")[0]
    assert (answer["publish_id"], answer["model_version"]) == live
    seen = {m for (m,) in query(wh, "select movie_id from marts.fct_ratings where user_id = 1")}
    assert not seen & {r["movie_id"] for r in recs}
    assert all(0.5 <= r["predicted_rating"] <= 5 for r in recs)


@pytest.mark.parametrize("query_string", [
    "k=40&exclude_genres=Drama,Comedy,Action,Thriller,Romance",  # the full handler
    "k=80"])  # the fast path hands a short list to it
def test_a_short_list_is_topped_up_in_the_api_as_postgres_would(api_server, wh, query_string):
    """When the stored top 50 cannot fill k, the API scores the rest from the movie
    factors it keeps in memory: the same films, ranks, scores and predictions as
    recs.recommend's own top-up in SQL."""
    params = dict(pair.split("=") for pair in query_string.split("&"))
    excluded = sorted(params.get("exclude_genres", "").split(",")) if "exclude_genres" \
        in params else []
    k = int(params["k"])
    status, answer = call(api_server, f"/api/users/1/recommendations?{query_string}")
    assert status == 200
    rows = query(wh, "select rank, movie_id, score, predicted_rating, source, model_version, "
                     "publish_id from recs.recommend(1, %s, %s)", (k, excluded))
    with wh.cursor() as cur:  # as the API's sessions call it: the stored rows only
        cur.execute("set mfy.recommend_top_up = off")
        cur.execute("select count(*) from recs.recommend(1, %s, %s)", (k, excluded))
        stored = cur.fetchone()[0]
        cur.execute("reset mfy.recommend_top_up")
    assert stored < k == len(rows)  # the stored list alone is short
    got = answer["recommendations"]
    assert [(r["rank"], r["movie_id"], r["source"]) for r in got] == \
        [(rank, movie, source) for rank, movie, _, _, source, _, _ in rows]
    assert [r["score"] for r in got] == pytest.approx([row[2] for row in rows], rel=1e-9)
    assert [r["predicted_rating"] for r in got] == pytest.approx(
        [round(row[3], 2) for row in rows], abs=0.011)
    assert (answer["model_version"], answer["publish_id"]) == rows[0][5:]
    assert answer["exclude_genres"] == excluded


def test_the_api_top_up_scores_in_numpy_not_in_postgres(published, wh):
    """serving.live.top_up itself (not the SQL fallback the handler has when it cannot):
    it fills user 1's short list to 40 with the films recs.recommend's SQL top-up picks."""
    import asyncio

    import asyncpg

    from serving import db, live

    excluded = ["Action", "Comedy", "Drama", "Romance", "Thriller"]

    async def top_up():
        conn = await asyncpg.connect(warehouse.url(published),
                                     server_settings={"mfy.recommend_top_up": "off"})
        try:
            row = await conn.fetchrow(db.RECOMMEND_JSON, 1, 40, excluded)
            assert row["known"] and row["n"] < 40
            return await live.top_up(live.LiveModels(), conn, 1, published.dataset, 40,
                                     excluded, json.loads(row["body"]))
        finally:
            await conn.close()

    topped = asyncio.run(top_up())
    assert topped is not None
    answer = json.loads(topped[1])
    sql = [m for m, in query(wh, "select movie_id from recs.recommend(1, 40, %s)", (excluded,))]
    assert [r["movie_id"] for r in answer["recommendations"]] == sql


def test_user_page_data_comes_in_one_request(api_server):
    """``/page``: the sections, the ranked list and the newest ratings at once, each
    as its own endpoint gives it; an app user's needs their token."""
    status, page = call(api_server, "/api/users/1/page?k=5&n=20")
    assert status == 200, page
    _, sections = call(api_server, "/api/users/1/sections?k=5")
    _, ranked = call(api_server, "/api/users/1/recommendations?k=20")
    _, ratings = call(api_server, "/api/users/1/ratings")
    assert page["sections"] == sections["sections"]
    assert page["recommendations"] == ranked["recommendations"]
    assert len(page["recommendations"]) == 20
    assert page["list"]["model_version"] == ranked["model_version"]
    assert page["ratings"] == ratings
    # the server's own time for it, as browsers' developer tools show it
    with urllib.request.urlopen(api_server + "/api/users/1/page", timeout=30) as response:
        timing = response.headers["Server-Timing"]
    assert re.fullmatch(r"app;dur=\d+\.\d\d", timing) and float(timing[8:]) > 0, timing
    _, user = call(api_server, "/api/users", {"preferred_genres": ["Drama"]})
    path = f"/api/users/{user['user_id']}/page"
    assert call(api_server, path)[0] == 401
    status, own = call(api_server, path, token=user["token"])
    assert status == 200 and own["ratings"]["total"] == 0
    assert [s["key"] for s in own["sections"]][0] == "for_you"


def test_recommendations_page_in_sections_with_reasons(api_server, wh):
    status, answer = call(api_server, "/api/users/1/sections?k=5")
    assert status == 200, answer
    sections = {s["key"]: s for s in answer["sections"]}
    seen = {m for (m,) in query(wh, "select movie_id from marts.fct_ratings where user_id = 1")}
    for section in sections.values():
        ids = [m["movie_id"] for m in section["movies"]]
        assert 1 <= len(ids) == len(set(ids)) <= 5 and not seen & set(ids), section
        assert section["title"] and section["reason"]
    # the model's picks are the stored list
    _, stored = call(api_server, "/api/users/1/recommendations?k=5")
    assert answer["sections"][0]["key"] == "for_you"
    assert ([m["movie_id"] for m in sections["for_you"]["movies"]]
            == [r["movie_id"] for r in stored["recommendations"]])
    # "because you rated": the neighbours of user 1's best (then latest) rated film
    (anchor, title), = query(wh, """
        select f.movie_id, c.title from marts.fct_ratings f
        join recs.movie_catalogue c using (movie_id)
        where f.user_id = 1 and exists (select 1 from recs.similar_movies s
                                        where s.movie_id = f.movie_id)
        order by f.rating desc, f.rated_at desc, f.movie_id limit 1""")
    assert sections["because"]["title"] == f"Because you rated {title}"
    neighbours = [m for (m,) in query(wh, """
        select similar_movie_id from recs.similar_movies
        where movie_id = %s and not (similar_movie_id = any(%s)) order by rank limit 5""",
                                      (anchor, list(seen)))]
    assert [m["movie_id"] for m in sections["because"]["movies"]] == neighbours
    # the genre of most of their good ratings, films of that genre only
    genre = sections["genre"]["title"].removeprefix("Your favourite genre: ")
    (favourite,), = query(wh, """
        select g from marts.fct_ratings f join recs.movie_catalogue c using (movie_id),
             unnest(c.genres) g
        where f.user_id = 1 group by g
        order by count(*) filter (where f.rating >= 4) desc, count(*) desc, g limit 1""")
    assert genre == favourite
    assert all(genre in m["genres"] for m in sections["genre"]["movies"])
    # user 1 of ml-100k is a 24-year-old man: the 18-24 M list
    assert sections["like_you"]["reason"].endswith("(18-24 M)")
    # and lives in ZIP area 8 (85711, Tucson): the West's list, rated films left out
    assert sections["region"]["title"] == "Popular in the West"
    west = [m for (m,) in query(wh, """
        select movie_id from recs.popular_movies where list_type = 'region'
            and segment = 'West' and not (movie_id = any(%s)) order by rank limit 5""",
                                (list(seen),))]
    assert [m["movie_id"] for m in sections["region"]["movies"]] == west
    seasons = {s for (s,) in query(wh, "select distinct segment from recs.popular_movies "
                                       "where list_type = 'season'")}
    assert ("season" in sections) is (answer["season"] in seasons)
    trending = [m for (m,) in query(wh, """
        select movie_id from recs.popular_movies where list_type = 'trending'
            and not (movie_id = any(%s)) order by rank limit 5""", (list(seen),))]
    assert [m["movie_id"] for m in sections["trending"]["movies"]] == trending

    # a newcomer: the sign-up's genre and segment, nothing "because" yet; theirs only
    _, user = call(api_server, "/api/users", {"age": 30, "gender": "F",
                                              "preferred_genres": ["Horror"]})
    path = f"/api/users/{user['user_id']}/sections?k=5"
    assert call(api_server, path)[0] == 401
    status, fresh = call(api_server, path, token=user["token"])
    assert status == 200, fresh
    keys = [s["key"] for s in fresh["sections"]]
    assert keys[:2] == ["for_you", "genre"] and "because" not in keys
    assert fresh["sections"][1]["title"] == "Your favourite genre: Horror"
    assert fresh["sections"][-1]["reason"].endswith("(25-34 F)")
    assert call(api_server, "/api/users/99999999/sections")[0] == 404


def test_home_rows_in_one_request(api_server, wh):
    status, answer = call(api_server, "/api/home?k=5&genres=3")
    assert status == 200, answer
    rows = {r["key"]: r for r in answer["rows"]}
    assert list(rows)[:2] == ["top", "trending"] and len(rows) in (5, 6)
    assert all(len(r["movies"]) == 5 and r["reason"] for r in rows.values())
    genres = [k.removeprefix("genre:") for k in rows if k.startswith("genre:")]
    # the genres whose lists were rated most (ml-100k: Action, Drama, Comedy)
    assert genres == [g for (g,) in query(wh, """
        select segment from recs.popular_movies where list_type = 'genre'
        group by segment order by sum(score) desc, segment limit 3""")]
    assert all(all(g in m["genres"] for m in rows[f"genre:{g}"]["movies"]) for g in genres)
    top = [m for (m,) in query(wh, "select movie_id from recs.movie_catalogue order by "
                                   "bayesian_rating desc nulls last, rating_count desc, "
                                   "movie_id limit 5")]
    assert [m["movie_id"] for m in rows["top"]["movies"]] == top
    trending = [m for (m,) in query(wh, "select movie_id from recs.popular_movies where "
                                        "list_type = 'trending' order by rank limit 5")]
    assert [m["movie_id"] for m in rows["trending"]["movies"]] == trending
    assert ("season" in rows) is bool(query(wh, "select 1 from recs.popular_movies where "
                                                "list_type = 'season' and segment = %s",
                                            (answer["season"],)))


def test_predicted_rating(api_server, wh):
    status, answer = call(api_server, "/api/users/1/predicted-rating/50")
    (expected,), = query(wh, "select recs.predict_rating(1, 50)")
    assert status == 200 and answer["predicted_rating"] == pytest.approx(expected, abs=1e-3)
    assert call(api_server, "/api/users/1/predicted-rating/99999")[0] == 404


def test_similar_movies_by_id_and_by_fuzzy_title(api_server):
    status, by_id = call(api_server, "/api/movies/50/similar?k=10")
    assert status == 200 and len(by_id["similar"]) == 10 and by_id["publish_id"]
    # a typo, no year, the article in front: still "Game, The (1997)"
    for title in ("the game", "Gmae, The", "gmae 1997", "game 1997", "The Game (1997)"):
        status, answer = call(api_server, "/api/similar?title=" + urllib.parse.quote(title))
        assert status == 200, title
        assert (answer["movie"]["movie_id"], answer["movie"]["year"]) == (333, 1997), title
        assert len(answer["similar"]) == 10
    # numerals as digits, words or Roman numerals
    for title, movie_id in (("12 monkeys", 7), ("twelve monkeys", 7), ("godfather 2", 187),
                            ("godfather part two", 187), ("the godfather", 127),
                            ("1 flew over the cuckoos nest", 357)):
        status, answer = call(api_server, "/api/movies/search?q=" + urllib.parse.quote(title))
        assert status == 200 and answer["movies"][0]["movie_id"] == movie_id, (
            title, [m["title"] for m in answer["movies"][:3]])
    assert call(api_server, "/api/similar?title=qqqqqqqqqqzzzz")[0] == 404


def test_sign_up_gives_cold_start_recommendations_at_once(api_server, wh):
    status, answer = call(api_server, "/api/users?k=10", {
        "age": 23, "gender": "F", "occupation": "Student",
        "preferred_genres": ["Horror", "Sci-Fi"]})
    assert status == 201
    user_id = answer["user_id"]
    assert user_id > 943
    recs = answer["recommendations"]
    assert len(recs) == 10
    assert {r["source"] for r in recs[:4]} == {"genre:Horror", "genre:Sci-Fi"}
    assert all({"Horror", "Sci-Fi"} & set(r["genres"]) for r in recs[:4])
    assert answer["publish_id"]
    stored = query(wh, "select age, gender, occupation, preferred_genres from app.users "
                       "where user_id = %s", (user_id,))
    assert stored == [(23, "F", "student", ["Horror", "Sci-Fi"])]
    # a newcomer without genres gets their segment's list
    _, plain = call(api_server, "/api/users", {"age": 30, "gender": "M"})
    assert plain["recommendations"][0]["source"] == "age_gender:25-34 M"
    status, answer = call(api_server, "/api/users", {"age": 30, "preferred_genres": ["Polka"]})
    assert status == 422 and "Polka" in answer["detail"]


def test_posted_ratings_reach_app_ratings(api_server, wh):
    _, user = call(api_server, "/api/users", {"age": 40, "preferred_genres": ["Drama"]})
    user_id = user["user_id"]
    first = user["recommendations"][0]["movie_id"]
    token = user["token"]
    status, answer = call(api_server, f"/api/users/{user_id}/ratings",
                          {"ratings": [{"movie_id": first, "rating": 4.5},
                                       {"movie_id": 50, "rating": 5}]}, token=token)
    assert status == 202 and answer["stored"] == 2
    assert "next nightly run" in answer["message"]
    rows = query(wh, "select movie_id, rating::float8 from app.ratings where user_id = %s "
                     "order by movie_id", (user_id,))
    assert rows == sorted([(first, 4.5), (50, 5.0)])
    _, rated = call(api_server, f"/api/users/{user_id}/ratings", token=token)
    assert rated["total"] == 2 and all(r["pending"] for r in rated["ratings"])
    # a rated movie no longer comes back as a recommendation
    _, again = call(api_server, f"/api/users/{user_id}/recommendations?k=50")
    assert first not in {r["movie_id"] for r in again["recommendations"]}
    status, answer = call(api_server, f"/api/users/{user_id}/ratings",
                          {"ratings": [{"movie_id": 99999, "rating": 3}]}, token=token)
    assert status == 404 and "99999" in answer["detail"]


def test_writes_need_the_users_own_token(api_server, wh):
    _, alice = call(api_server, "/api/users", {"preferred_genres": ["Drama"]})
    _, bob = call(api_server, "/api/users", {"preferred_genres": ["Comedy"]})
    rating = {"ratings": [{"movie_id": 50, "rating": 4}]}
    stored = "select count(*) from app.ratings where user_id = any(%s)"
    before = query(wh, stored, ([1, alice["user_id"], bob["user_id"]],))

    # no token, a made-up one, someone else's: 401, 401, 403, and nothing stored
    status, answer = call(api_server, "/api/users/1/ratings", rating)
    assert status == 401 and "needs the user's token" in answer["detail"]
    status, answer = call(api_server, f"/api/users/{alice['user_id']}/ratings", rating,
                          token="made-up")
    assert status == 401 and answer["detail"] == "invalid or revoked token"
    status, answer = call(api_server, f"/api/users/{alice['user_id']}/ratings", rating,
                          token=bob["token"])
    assert status == 403 and f"belongs to user {bob['user_id']}" in answer["detail"]
    assert query(wh, stored, ([1, alice["user_id"], bob["user_id"]],)) == before
    # an app user's history is theirs; the release's users' histories stay public data
    assert call(api_server, f"/api/users/{alice['user_id']}/ratings")[0] == 401
    assert call(api_server, f"/api/users/{alice['user_id']}/ratings", token=bob["token"]
                )[0] == 403
    assert call(api_server, f"/api/users/{alice['user_id']}/ratings", token=alice["token"]
                )[0] == 200
    # the warehouse keeps only the token's hash, and the API's role cannot read even that
    hashed = hashlib.sha256(alice["token"].encode()).hexdigest()
    assert query(wh, "select user_id from app.tokens where token_hash = %s", (hashed,)) == [
        (alice["user_id"],)]
    assert query(wh, "select count(*) from app.tokens where token_hash = %s",
                 (alice["token"],)) == [(0,)]

    # revoked: the token stops working at once
    assert call(api_server, "/api/tokens/current", token=alice["token"], method="DELETE"
                )[0] == 204
    status, answer = call(api_server, f"/api/users/{alice['user_id']}/ratings", rating,
                          token=alice["token"])
    assert status == 401 and answer["detail"] == "invalid or revoked token"
    assert call(api_server, "/api/tokens/current", token=alice["token"], method="DELETE"
                )[0] == 401


def test_the_api_role_cannot_write_for_anyone_without_a_token(published):
    reader = psycopg2.connect(warehouse.reader_url(published))
    try:
        for statement in ("select app.submit_rating('ml-100k', 1, 50, 4)",
                          "select app.sign_up('ml-100k', 30, 'F', null, null, '{}')",
                          "select token_hash from app.tokens"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege), reader:
                reader.cursor().execute(statement)
        with pytest.raises(psycopg2.errors.InvalidAuthorizationSpecification), reader:
            reader.cursor().execute(
                "select app.submit_rating_as(%s, 'ml-100k', 50, 4)", ("0" * 64,))
    finally:
        reader.close()


def test_writes_are_rate_limited_per_address(published):
    limited = dataclasses.replace(published, api=dataclasses.replace(published.api,
                                                                     write_limit=2))
    with running_api(limited) as base:
        _, user = call(base, "/api/users", {"preferred_genres": ["Drama"]})
        rating = {"ratings": [{"movie_id": 50, "rating": 4}]}
        assert call(base, f"/api/users/{user['user_id']}/ratings", rating,
                    token=user["token"])[0] == 202
        status, answer = call(base, f"/api/users/{user['user_id']}/ratings", rating,
                              token=user["token"])
    assert status == 429 and "at most 2 a minute" in answer["detail"]


def test_health_names_model_publish_and_freshness(api_server, wh):
    status, health = call(api_server, "/api/health")
    assert status == 200 and health["status"] == "ok"
    live = query(wh, "select publish_id, model_version from recs.publication")[0]
    assert (health["publish_id"], health["model_version"]) == live
    assert health["published_at"] and health["data_freshness"]["ratings_through"].startswith(
        "1998-04-22")
    assert call(api_server, "/openapi.json")[1]["info"]["title"] == "MoviesForYou"


def test_readers_never_fail_during_back_to_back_publishes(api_server, published, spark):
    """Readers hammer the lookup (HTTP and SQL) while two publishes run back to back."""
    stop = threading.Event()
    seen_versions: Counter = Counter()
    problems: list[str] = []

    def http_reader(user: int) -> None:
        while not stop.is_set():
            status, answer = call(api_server, f"/api/users/{user}/recommendations?k=10")
            if status != 200:
                problems.append(f"HTTP {status}: {answer}")
            elif len(answer["recommendations"]) != 10:
                problems.append(f"{len(answer['recommendations'])} recommendations")
            else:
                seen_versions[answer["publish_id"]] += 1

    def sql_reader(user: int) -> None:
        reader = warehouse.connect(dataclasses.replace(
            published, warehouse_url=warehouse.reader_url(published)))
        try:
            while not stop.is_set():
                rows = query(reader, "select count(*), count(distinct publish_id), "
                                     "min(publish_id) from recs.recommend(%s, 10)", (user,))
                n, versions, pid = rows[0]
                if n != 10 or versions != 1:
                    problems.append(f"SQL: {n} rows from {versions} versions")
                seen_versions[pid] += 1
        except Exception as exc:  # any error is a failure of the test
            problems.append(f"SQL error: {exc}")
        finally:
            reader.close()

    threads = [threading.Thread(target=http_reader, args=(u,)) for u in (1, 2, 3, 4)]
    threads += [threading.Thread(target=sql_reader, args=(u,)) for u in (5, 6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        results = [recs_publish.publish(published, spark=spark) for _ in range(2)]
        time.sleep(3)  # the API's cache follows the live publish once a second
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert problems == []
    new_ids = {r.publish_id for r in results}
    assert new_ids <= set(seen_versions), "readers never saw the new versions"
    assert sum(seen_versions.values()) > 100
    assert all(r.swap_lock_ms < 1000 for r in results)


def test_ratings_change_the_list_at_once_by_folding_the_viewer_in(api_server, wh):
    """A newcomer rates the Star Wars trilogy and their next list is folded in against
    the live model (no nightly run in between); every further rating moves it again."""
    _, user = call(api_server, "/api/users", {"preferred_genres": ["Comedy"]})
    user_id, token = user["user_id"], user["token"]
    before = [r["movie_id"] for r in user["recommendations"]]
    assert all(r["source"] != "als-live" for r in user["recommendations"])
    trilogy = {50: 5, 181: 5, 172: 4.5}  # Star Wars, Return of the Jedi, Empire
    status, _ = call(api_server, f"/api/users/{user_id}/ratings",
                     {"ratings": [{"movie_id": m, "rating": r} for m, r in trilogy.items()]},
                     token=token)
    assert status == 202
    _, after = call(api_server, f"/api/users/{user_id}/recommendations?k=10")
    listed = after["recommendations"]
    ids = [r["movie_id"] for r in listed]
    assert after["folded_in_ratings"] == 3 and len(listed) == 10
    assert {r["source"] for r in listed} == {"als-live"}
    assert ids != before and not set(trilogy) & set(ids)
    # what people who loved the trilogy loved: more adventure, action and science
    # fiction than the comedy lover's first list had
    def adventurous(recs: list[dict]) -> int:
        return sum(bool({"Action", "Adventure", "Sci-Fi"} & set(r["genres"])) for r in recs)

    assert adventurous(listed) >= 5 and adventurous(listed) > adventurous(
        user["recommendations"]), [(r["title"], r["genres"]) for r in listed]
    assert all(1 <= r["predicted_rating"] <= 5 for r in listed)
    assert after["publish_id"] == user["publish_id"]

    # a fourth rating: the cached answer is forgotten and the list moves again
    disliked = ids[0]
    call(api_server, f"/api/users/{user_id}/ratings",
         {"ratings": [{"movie_id": disliked, "rating": 1}]}, token=token)
    _, again = call(api_server, f"/api/users/{user_id}/recommendations?k=10")
    assert again["folded_in_ratings"] == 4
    assert disliked not in {r["movie_id"] for r in again["recommendations"]}
    # exclusions hold on a folded-in list too
    _, filtered = call(api_server,
                       f"/api/users/{user_id}/recommendations?k=10&exclude_genres=Action")
    assert filtered["recommendations"] and all(
        "Action" not in r["genres"] for r in filtered["recommendations"])


def test_search_filters_sorts_and_predicts_for_a_viewer(api_server, wh):
    # a misspelling finds the classic, not a film rated once that looks alike
    status, answer = call(api_server, "/api/movies/search?q=shawshenk")
    assert status == 200 and answer["movies"][0]["movie_id"] == 64, answer["movies"][:3]

    # all of these genres, a year range; without a title the best rated come first
    _, found = call(api_server, "/api/movies/search?genres=Sci-Fi&genres=War"
                                "&year_from=1970&year_to=1990&limit=50")
    (count,), = query(wh, "select count(*) from recs.movie_catalogue where genres @> %s "
                          "and release_year between 1970 and 1990", (["Sci-Fi", "War"],))
    assert found["sort"] == "rating" and found["total"] == count >= 2
    assert all({"Sci-Fi", "War"} <= set(m["genres"]) and 1970 <= m["year"] <= 1990
               for m in found["movies"])
    ranked = [m["bayesian_rating"] for m in found["movies"]]
    assert ranked == sorted(ranked, reverse=True)

    # a title, newest first
    _, trek = call(api_server, "/api/movies/search?q=star%20trek&sort=year&limit=20")
    years = [m["year"] for m in trek["movies"]]
    assert years == sorted(years, reverse=True)
    assert sum("Star Trek" in m["title"] for m in trek["movies"]) >= 5

    # a viewer: their predicted ratings (recs.predict_rating's) and what they rated
    _, mine = call(api_server, "/api/movies/search?genres=Sci-Fi&user_id=1&sort=predicted"
                               "&limit=100")
    predicted = [m["predicted_rating"] for m in mine["movies"]]
    assert predicted == sorted(predicted, reverse=True)
    assert len(predicted) == min(100, mine["total"]) and mine["total"] > 50
    for movie in mine["movies"][:10]:
        (expected,), = query(wh, "select recs.predict_rating(1, %s)", (movie["movie_id"],))
        assert abs(movie["predicted_rating"] - expected) < 0.01
    rated = {m for (m,) in query(wh, "select movie_id from marts.fct_ratings "
                                     "where user_id = 1 and dataset = 'ml-100k'")}
    assert [m["rated"] for m in mine["movies"]] == [m["movie_id"] in rated
                                                    for m in mine["movies"]]
    assert any(m["rated"] for m in mine["movies"]) and not all(
        m["rated"] for m in mine["movies"])

    # mistakes are 422s that say what is wrong
    assert call(api_server, "/api/movies/search?sort=predicted")[0] == 422
    status, answer = call(api_server, "/api/movies/search?genres=Polka")
    assert status == 422 and "Polka" in answer["detail"] and "Drama" in answer["detail"]
    assert call(api_server, "/api/movies/search?year_from=1990&year_to=1980")[0] == 422

    # an app user's ratings are theirs: their view of the search needs their token
    _, user = call(api_server, "/api/users", {"preferred_genres": ["Drama"]})
    path = f"/api/movies/search?q=star%20wars&user_id={user['user_id']}"
    assert call(api_server, path)[0] == 401
    status, theirs = call(api_server, path, token=user["token"])
    assert status == 200 and not any(m["rated"] for m in theirs["movies"])
    assert all(m["predicted_rating"] is not None for m in theirs["movies"])
