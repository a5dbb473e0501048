"""Each film once, on the real MovieLens 100K as published.

The release lists 19 films under two ids with the same IMDb link (Chasing Amy as 246
and 268, Body Snatchers as 573 and 670, Twilight as 911 and, under its other title The
Magic Hour, 1592, ...). The marts keep one entry per film (the lowest id) and count the
ratings of both for it; the lists, similar films, search and the API follow.
"""

from __future__ import annotations

import urllib.parse

import pytest

from conftest import call, query

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: (kept id, merged id) of films the release lists twice.
TWICE = [(246, 268), (297, 303), (876, 881), (573, 670), (1429, 1680), (911, 1592)]


def test_no_two_published_films_share_an_imdb_link(wh):
    assert query(wh, """select imdb_url, array_agg(movie_id) from recs.movie_catalogue
                        where imdb_url is not null group by 1 having count(*) > 1""") == []
    (films, merged), = query(wh, "select count(*), sum(cardinality(merged_movie_ids)) "
                                 "from recs.movie_catalogue")
    assert (films, merged) == (1682 - 19, 19)
    for kept, duplicate in TWICE:
        assert query(wh, "select merged_movie_ids from recs.movie_catalogue where movie_id = %s",
                     (kept,)) == [([duplicate],)]
    # nothing published names a merged id
    for table, column in (("user_recommendations", "movie_id"), ("similar_movies", "movie_id"),
                          ("similar_movies", "similar_movie_id"), ("movie_factors", "movie_id"),
                          ("popular_movies", "movie_id")):
        assert query(wh, f"select count(*) from recs.{table} where {column} = any(%s)",
                     ([d for _, d in TWICE],)) == [(0,)], table


def test_the_sql_functions_take_either_id_of_a_film(wh):
    for kept, duplicate in TWICE:
        assert query(wh, "select recs.film_id(%s), recs.film_id(%s)",
                     (kept, duplicate)) == [(kept, kept)]
        (by_kept, by_duplicate), = query(
            wh, "select recs.predict_rating(1, %s), recs.predict_rating(1, %s)",
            (kept, duplicate))
        assert by_kept is not None and by_kept == by_duplicate
    assert query(wh, "select recs.film_id(999999), recs.predict_rating(1, 999999)") == [
        (None, None)]


def test_similar_never_answers_the_film_itself(api_server, wh):
    for kept, duplicate in TWICE[:3]:
        for asked in (kept, duplicate):  # a merged id answers with its film
            status, answer = call(api_server, f"/api/movies/{asked}/similar?k=10")
            assert status == 200 and answer["movie"]["movie_id"] == kept
            assert kept not in {m["movie_id"] for m in answer["similar"]}
            assert duplicate not in {m["movie_id"] for m in answer["similar"]}
    # no neighbour anywhere has its movie's title and year
    assert query(wh, """
        select count(*) from recs.similar_movies as s
        join recs.movie_catalogue as a on a.movie_id = s.movie_id
        join recs.movie_catalogue as b on b.movie_id = s.similar_movie_id
        where a.title = b.title and a.release_year is not distinct from b.release_year""") == [
        (0,)]


def test_search_shows_body_snatchers_once(api_server):
    status, found = call(api_server, "/api/movies/search?" + urllib.parse.urlencode(
        {"q": "Body Snatchers", "genres": "Horror", "year_from": 1990, "year_to": 1995,
         "limit": 50}))
    assert status == 200
    hits = [(m["movie_id"], m["title"], m["year"]) for m in found["movies"]
            if m["title"] == "Body Snatchers"]
    assert hits == [(573, "Body Snatchers", 1993)], found["movies"]
    status, movie = call(api_server, "/api/movies/670")
    assert status == 200 and movie["movie_id"] == 573


def test_a_viewers_two_ratings_of_one_film_merge_to_the_later(wh):
    both = query(wh, """
        select user_id, array_agg(rating order by rated_at_epoch, movie_id)
        from raw.ratings where dataset = 'ml-100k' and movie_id in (246, 268)
        group by user_id having count(*) = 2 order by user_id""")
    assert len(both) >= 3
    for user, ratings in both:
        assert query(wh, """select movie_id, rating from marts.fct_ratings
                            where user_id = %s and movie_id in (246, 268)""", (user,)) == [
            (246, ratings[-1])], user
    (raw,), = query(wh, "select count(*) from raw.ratings where dataset = 'ml-100k'")
    (kept,), = query(wh, "select count(*) from marts.fct_ratings where dataset = 'ml-100k' "
                         "and rating_source = 'movielens'")
    assert raw == 100_000 and kept < raw  # one rating per viewer and film
    assert query(wh, """select count(*) from (select 1 from marts.fct_ratings
                        where rating_source = 'movielens'
                        group by user_id, movie_id having count(*) > 1) as twice""") == [(0,)]


@pytest.mark.parametrize("title", ["Cape Fear", "Sabrina"])
def test_distinct_films_sharing_a_title_stay_apart_the_better_known_first(api_server, title):
    status, found = call(api_server, "/api/movies/search?q=" + urllib.parse.quote(title))
    assert status == 200
    same = [m for m in found["movies"] if m["title"] == title]
    assert len(same) == 2 and len({m["year"] for m in same}) == 2, found["movies"]
    assert found["movies"][0]["title"] == title
    assert same[0]["rating_count"] > same[1]["rating_count"]
