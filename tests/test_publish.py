"""Publishing on the real ml-100k: the recs tables, SQL functions, validation gate, rollback."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import execute, query
from moviesforyou.foundation import warehouse
from moviesforyou.orchestration import recs_publish
from moviesforyou.publishing import publish
from moviesforyou.quality import checks

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


def live_id(connection) -> int:
    return query(connection, "select publish_id from recs.publication")[0][0]


def test_every_user_gets_n_unseen_movies(wh):
    (users, per_user_min, per_user_max), = query(wh, """
        select count(*), min(n), max(n) from (
            select user_id, count(*) as n from recs.user_recommendations group by user_id) x""")
    assert users == 943
    assert per_user_min == per_user_max == 50
    seen = query(wh, """select count(*) from recs.user_recommendations r
                        join marts.fct_ratings f using (user_id, movie_id)""")[0][0]
    assert seen == 0
    assert query(wh, "select count(distinct source), min(source) from recs.user_recommendations"
                 ) == [(1, "als")]
    # the lists are personal: users do not all get the same top 10
    distinct_tops = query(wh, """select count(distinct list) from (
        select user_id, array_agg(movie_id order by rank) as list
        from recs.user_recommendations where rank <= 10 group by user_id) x""")[0][0]
    assert distinct_tops > 900


def test_publish_is_logged_with_counts_timings_and_validation(wh):
    pid = live_id(wh)
    (status, counts, timings, validation, lock_ms, version), = query(wh, """
        select status, row_counts, timings, validation, swap_lock_ms, model_version
        from ops.publish_log where publish_id = %s""", (pid,))
    assert status == "live"
    assert counts["user_recommendations"] == 943 * 50
    assert counts["publication"] == 1
    assert {"score", "build", "validate"} <= set(timings)
    assert validation["success"] is True and validation["evaluated"] >= 20
    assert 0 < lock_ms < 5_000
    assert query(wh, "select model_version from recs.publication") == [(version,)]
    assert query(wh, "select success, schema_name from ops.validations "
                     "where layer = 'recs' and subject = %s", (f"publish:{pid}",)) == [
        (True, "recs_build")]


def test_cold_start_lists(wh):
    lists = dict(query(wh, "select list_type, count(distinct segment) from recs.popular_movies "
                           "group by 1"))
    seasons = query(wh, """select count(distinct d.season) from marts.fct_ratings f
                           join marts.dim_dates d using (date_sk)""")[0][0]
    assert seasons == 3  # ml-100k runs from September 1997 to April 1998
    # regions: the four census regions of the US ZIP codes, and Canada's postal codes
    assert lists == {"overall": 1, "genre": 18, "age_gender": 14, "occupation": 21,
                     "region": 5, "season": seasons, "trending": 1}
    # trending: the last 30 days up to the newest rating, each weighing exp(-days / 7)
    (top,), = query(wh, """
        with newest as (select max(rated_at) as t from marts.fct_ratings)
        select f.movie_id from marts.fct_ratings f, newest
        where f.rated_at > newest.t - interval '30 days' group by f.movie_id
        order by sum(exp(-extract(epoch from newest.t - f.rated_at) / (7 * 86400.0))) desc,
                 avg(f.rating) desc, f.movie_id limit 1""")
    assert query(wh, "select movie_id from recs.popular_movies "
                     "where list_type = 'trending' and rank = 1") == [(top,)]
    # the overall list is by number of ratings: Star Wars (583) first
    assert query(wh, """select c.title from recs.popular_movies p
                        join recs.movie_catalogue c using (movie_id)
                        where list_type = 'overall' and rank = 1""") == [("Star Wars",)]
    horror = query(wh, """select bool_and('Horror' = any(c.genres)) from recs.popular_movies p
                          join recs.movie_catalogue c using (movie_id)
                          where list_type = 'genre' and segment = 'Horror'""")[0][0]
    assert horror


def test_recommend_function(wh):
    rows = query(wh, "select rank, movie_id, genres, source, publish_id "
                     "from recs.recommend(1, 12, '{Drama,Comedy}')")
    assert [r[0] for r in rows] == list(range(1, 13))
    assert all(not {"Drama", "Comedy"} & set(r[2]) for r in rows)
    assert {r[3] for r in rows} == {"als"}
    assert {r[4] for r in rows} == {live_id(wh)}
    unknown = query(wh, "select source from recs.recommend(987654, 3)")
    assert [r[0] for r in unknown] == ["overall:all"] * 3


def test_recommend_tops_up_a_list_that_exclusions_leave_short(wh):
    excluded = "{Drama,Comedy,Action,Thriller,Romance}"
    stored = query(wh, """select r.movie_id from recs.user_recommendations r
                          join recs.movie_catalogue m using (movie_id)
                          where r.user_id = 1 and not m.genres && %s::text[]
                          order by r.rank""", (excluded,))
    assert 0 < len(stored) < 40  # the stored top 50 alone cannot fill 40
    rows = query(wh, "select rank, movie_id, genres, score, source "
                     "from recs.recommend(1, 40, %s)", (excluded,))
    assert [r[0] for r in rows] == list(range(1, 41))
    assert [r[1] for r in rows[:len(stored)]] == [m for m, in stored]
    assert len({r[1] for r in rows}) == 40
    assert all(not set(excluded.strip("{}").split(",")) & set(r[2]) for r in rows)
    assert {r[4] for r in rows} == {"als"}
    scores = [r[3] for r in rows]  # one ranking: the live scores continue the stored ones
    assert all(a >= b - 1e-9 for a, b in zip(scores, scores[1:], strict=False))
    seen = {m for m, in query(wh, "select movie_id from marts.fct_ratings where user_id = 1")}
    assert not seen & {r[1] for r in rows}
    # the same top-up as scoring every movie and skipping what the user rated or was given
    (mine,), = query(wh, "select implicit_factors from recs.user_factors where user_id = 1")
    given = {m for m, in query(wh, "select movie_id from recs.user_recommendations "
                                   "where user_id = 1")}
    everything = sorted(
        ((-float(np.dot(mine, factors)), movie) for movie, factors, genres in query(wh, """
            select f.movie_id, f.implicit_factors, m.genres from recs.movie_factors f
            join recs.movie_catalogue m using (movie_id)
            where f.implicit_factors is not null""")
         if movie not in seen | given and not set(excluded.strip("{}").split(",")) & set(genres)))
    assert [r[1] for r in rows[len(stored):]] == [m for _, m in everything[:40 - len(stored)]]


def test_the_unrolled_dot_product_equals_the_sum_for_any_length(wh):
    rank, = query(wh, "select cardinality(implicit_factors) from recs.movie_factors "
                      "where implicit_factors is not null limit 1")[0]
    for n in (rank, 3, rank + 1):
        u, m = np.linspace(-1, 1, n), np.linspace(2, -0.5, n)
        (got,), = query(wh, "select recs.implicit_dot(%s::float8[], %s::float8[])",
                        (u.tolist(), m.tolist()))
        assert got == pytest.approx(float(u @ m), rel=1e-12), n


def test_predict_rating_function_tracks_real_ratings(wh):
    (mae, n), = query(wh, """
        select avg(abs(recs.predict_rating(user_id, movie_id) - rating)), count(*)
        from marts.fct_ratings where user_id <= 50""")
    assert n > 3000
    assert mae < 0.8  # in-sample: the bias baseline alone is about 0.75
    (value,), = query(wh, "select recs.predict_rating(1, 50)")
    assert 0.5 <= value <= 5.0
    assert query(wh, "select recs.predict_rating(1, 99999)") == [(None,)]


def _published_similarity(wh, method: str | None):
    """``similarity_model`` over the live publish's own factors, counts, genres and tags
    (ml-100k has none); ``method`` None: the default."""
    import numpy as np
    import pandas as pd

    from moviesforyou.publishing.recs_build import movie_genres, movie_tags
    from spark_jobs.models import Factors, ModelParams
    from spark_jobs.score import ScoreConfig, similarity_model

    rows = query(wh, "select movie_id, explicit_factors, implicit_factors from "
                     "recs.movie_factors where implicit_factors is not null order by movie_id")
    ids = np.array([r[0] for r in rows])

    def factors(column: int) -> Factors:
        return Factors(ModelParams(), np.array([]), np.zeros((0, 1)), ids,
                       np.array([r[column] for r in rows], dtype=float))

    counts = pd.Series(dict(query(wh, "select movie_id, count(*) from marts.fct_ratings "
                                      "group by 1")))
    genres, tags = movie_genres(wh), movie_tags(wh)
    wh.rollback()
    assert tags.empty  # ml-100k
    model = similarity_model(factors(2), counts, genres, explicit=factors(1), tags=tags,
                             method=method, cfg=ScoreConfig())
    return model, counts, genres


def test_similar_movies_favour_taste_over_popularity(wh):
    rows = query(wh, """select c.title, s.similar_movie_id, s.similarity
                        from recs.similar_movies s
                        join recs.movie_catalogue c on c.movie_id = s.similar_movie_id
                        where s.movie_id = 50 order by s.rank""")
    titles = [t for t, _, _ in rows[:10]]
    assert "Return of the Jedi" in titles and "The Empire Strikes Back" in titles, titles
    sims = [s for _, _, s in rows]
    assert sims == sorted(sims, reverse=True)
    # the published list is the default similarity over the published factors and genres
    model, counts, genres = _published_similarity(wh, None)
    best, values = model(np.array([50]))
    assert [m for _, m, _ in rows] == list(best[0])
    assert np.allclose(sims, values[0], rtol=1e-6)
    # against the plain cosine of implicit factors (the earlier lists): neighbours
    # share a genre more often and are less often just the most rated films
    targets = counts[counts >= 50].index.to_numpy()
    share, popularity = {}, {}
    for method in ("cosine", "mixed+genres"):
        near, _ = (model if method == "mixed+genres"
                   else _published_similarity(wh, method)[0])(targets)
        near = near[:, :10]
        share[method] = np.mean([len(set(genres.get(t, [])) & set(genres.get(m, []))) > 0
                                 for t, row in zip(targets, near, strict=True) for m in row])
        popularity[method] = np.median(counts.reindex(near.ravel()).to_numpy())
    assert share["mixed+genres"] > share["cosine"] + 0.03, share
    assert popularity["mixed+genres"] < popularity["cosine"], popularity


def test_tags_make_films_alike():
    """``+tags``: the TF-IDF cosine of two films' tags is added to the genre overlap,
    each with its weight, more for films with few ratings. The films' factors are
    orthogonal here, so only the content terms rank them."""
    import numpy as np
    import pandas as pd

    from spark_jobs.models import Factors, ModelParams
    from spark_jobs.score import ScoreConfig, similarity_model

    ids = np.arange(1, 41)
    implicit = Factors(ModelParams(), np.array([]), np.zeros((0, 1)), ids, np.eye(40))
    counts = pd.Series(25, index=ids)
    counts[1] = 10
    genres = pd.Series({m: ["Drama"] for m in ids})
    # "classic" is on every film, so it says nothing; "time travel" is on 1, 2 and 9,
    # "paradox" on 3 and 9
    tags = pd.Series({m: {"classic": 3} for m in ids}, dtype=object)
    tags[1] = {"classic": 1, "time travel": 4}
    tags[2] = {"classic": 5, "time travel": 2}
    tags[3] = {"classic": 2, "paradox": 1}
    tags[9] = {"classic": 1, "time travel": 1, "paradox": 2}
    cfg = ScoreConfig(min_ratings=5)
    model = similarity_model(implicit, counts, genres, tags=tags, method="cosine+genres+tags",
                             cfg=cfg)
    (near,), (sims,) = model(np.array([1]))
    assert list(near[:2]) == [2, 9]

    # by hand: idf = log(40 tagged films / films with the tag), weight log(1 + users)
    tt, paradox = np.log(40 / 3), np.log(40 / 2)
    v9 = np.array([np.log1p(1) * tt, np.log1p(2) * paradox])  # film 1's is all time travel
    cosine = {2: 1.0, 9: v9[0] / np.linalg.norm(v9)}
    more = 1 + cfg.genre_shrink / (cfg.genre_shrink + 10)  # film 1 has 10 ratings
    genre, tag = cfg.genre_weight * more, cfg.tag_weight * more
    for movie, value in zip(near[:3], sims[:3], strict=True):  # genres: all Drama
        expected = (genre * 1 + tag * cosine.get(movie, 0.0)) / (1 + genre + tag)
        assert np.isclose(value, expected, rtol=1e-5), movie

    # without the term, or for a release without tags, all films are equally alike
    for untagged in (similarity_model(implicit, counts, genres, tags=tags,
                                      method="cosine+genres", cfg=cfg),
                     similarity_model(implicit, counts, genres, tags=pd.Series(dtype=object),
                                      method="cosine+genres+tags", cfg=cfg)):
        _, (flat,) = untagged(np.array([1]))
        assert np.allclose(flat, genre / (1 + genre))


def test_reader_role_can_query_but_not_write(published):
    reader = warehouse.connect(dataclasses.replace(
        published, warehouse_url=warehouse.reader_url(published)))
    try:
        assert query(reader, "select count(*) from recs.recommend(1, 5)") == [(5,)]
        with pytest.raises(Exception, match="permission denied"):
            query(reader, "delete from recs.user_recommendations")
    finally:
        reader.close()


def test_failed_validation_publishes_nothing(published, wh, spark):
    before = live_id(wh)
    count_before = query(wh, "select count(*) from recs.user_recommendations")[0][0]
    # a movie that is recommended disappears from dim_movies: the recs suite must notice
    (movie,), = query(wh, "select movie_id from recs.user_recommendations where rank = 1 limit 1")
    execute(wh, "create table ops.saved_movie as select * from marts.dim_movies "
                "where movie_id = %s", (movie,))
    execute(wh, "delete from marts.dim_movies where movie_id = %s", (movie,))
    try:
        with pytest.raises(checks.ValidationFailed, match="every movie id exists in dim_movies"):
            recs_publish.publish(published, spark=spark)
    finally:
        execute(wh, "insert into marts.dim_movies select * from ops.saved_movie")
        execute(wh, "drop table ops.saved_movie")
    assert live_id(wh) == before
    assert query(wh, "select count(*) from recs.user_recommendations")[0][0] == count_before
    (status, validation, error), = query(wh, """select status, validation, error
        from ops.publish_log where action = 'publish' order by publish_id desc limit 1""")
    assert status == "failed"
    failed = {f["description"] for f in validation["failures"]}
    assert "every movie id exists in dim_movies" in failed
    assert "recs_build.user_recommendations" in error
    assert query(wh, "select count(*) from pg_tables where schemaname = 'recs_build'") == [(0,)]


def test_versions_are_kept_and_rollback_is_instant(published, wh, spark):
    first = live_id(wh)
    second = recs_publish.publish(published, spark=spark).publish_id
    assert live_id(wh) == second > first
    listed = {pid: where for pid, where, *_ in publish.versions(published)}
    assert listed[second] == "live" and listed[first] == "kept"

    restored, lock_ms = publish.rollback(published)
    assert restored == first and live_id(wh) == first
    assert lock_ms < 5_000
    assert query(wh, "select count(*) from recs.user_recommendations") == [(943 * 50,)]
    (metrics,), = query(wh, "select metrics from ops.publish_log where action = 'rollback' "
                            "order by publish_id desc limit 1")
    assert metrics == {"restored_publish_id": first, "replaced_publish_id": second}
    # and forward again
    publish.rollback(published, second)
    assert live_id(wh) == second
    with pytest.raises(publish.PublishError, match="not kept"):
        publish.rollback(published, 999_999)


def test_only_the_last_versions_are_kept(published, wh, spark):
    keep_one = dataclasses.replace(published,
                                   publish=dataclasses.replace(published.publish, keep=1))
    recs_publish.publish(keep_one, spark=spark)
    kept = [pid for pid, where, *_ in publish.versions(published) if where == "kept"]
    assert len(kept) == 1
    dropped = query(wh, "select count(*) from ops.publish_log where status = 'dropped'")[0][0]
    assert dropped >= 1


def test_config_from_environment_rejects_bad_values():
    from moviesforyou.foundation.config import ConfigError, Settings

    assert Settings.from_env({"MFY_RECS_N": "20"}).publish.n == 20
    with pytest.raises(ConfigError, match="MFY_RECS_N='ten'"):
        Settings.from_env({"MFY_RECS_N": "ten"})
    with pytest.raises(ConfigError, match="MFY_RECS_KEEP"):
        Settings.from_env({"MFY_RECS_KEEP": "-1"})


def test_validation_report_is_json(published):
    report = checks.validate(published, "recs")
    assert report.success
    assert json.loads(json.dumps(report.as_json()))["layer"] == "recs"
