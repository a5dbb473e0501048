"""The incremental dbt build gives exactly the rows of a full rebuild.

One ml-100k warehouse: a full build, then nights of app ratings built
incrementally, each compared with ``dbt build --full-refresh`` on the same data,
row for row, over every table and view of the intermediate and marts schemas
(the build-time bookkeeping columns aside).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

import pytest
from psycopg2 import sql

from conftest import execute, fresh_database, query
from moviesforyou.foundation import warehouse
from moviesforyou.ingestion import ingest, sources
from moviesforyou.transformation import transform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: when a row was built, not what it says
BOOKKEEPING = {"built_at", "through_built_at"}


def snapshot(settings) -> dict[str, list[tuple]]:
    """Every row of every relation dbt built in intermediate and marts, sorted."""
    conn = warehouse.connect(settings)
    try:
        relations = query(conn, """
            select table_schema, table_name from information_schema.tables
            where table_schema in ('intermediate', 'marts') order by 1, 2""")
        rows = {}
        for schema, name in relations:
            columns = [c for (c,) in query(conn, """
                select column_name from information_schema.columns
                where table_schema = %s and table_name = %s order by ordinal_position""",
                (schema, name)) if c not in BOOKKEEPING]
            listed = sql.SQL(", ").join(map(sql.Identifier, columns))
            statement = sql.SQL("select {} from {}.{} order by {}").format(
                listed, sql.Identifier(schema), sql.Identifier(name),
                sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(columns))))
            rows[f"{schema}.{name}"] = query(conn, statement.as_string(conn))
        return rows
    finally:
        conn.close()


def assert_same(incremental: dict, full: dict) -> None:
    assert incremental.keys() == full.keys()
    differing = [name for name in full if incremental[name] != full[name]]
    assert not differing, f"incremental and full builds differ in {differing}"


def rows_written(summary, model: str) -> int:
    return {r["unique_id"]: r["rows_affected"]
            for r in summary.build.results}[f"model.moviesforyou.{model}"]


@pytest.fixture(scope="module")
def warehouse_100k(embedded_settings, ml100k):
    with fresh_database(embedded_settings) as settings:
        conn = warehouse.connect(settings)
        try:
            ingest.load_release(conn, sources.open_source(ml100k, settings.home), "ml-100k")
        finally:
            conn.close()
        transform.transform(settings, docs=False)
        yield settings


def add_ratings(settings, values: list[tuple]) -> None:
    conn = warehouse.connect(settings)
    try:
        for user_id, movie_id, rating, rated_at in values:
            execute(conn, """insert into app.ratings (dataset, user_id, movie_id, rating, rated_at)
                             values ('ml-100k', %s, %s, %s, %s)""",
                    (user_id, movie_id, rating, rated_at))
    finally:
        conn.close()


def test_nights_of_app_ratings_build_like_a_full_rebuild(warehouse_100k):
    settings = warehouse_100k
    conn = warehouse.connect(settings)
    try:
        execute(conn, """insert into app.users (user_id, dataset, gender, age, occupation)
                         values (944, 'ml-100k', 'F', 30, 'writer')""")
        # user 1's first rating is 1997-09-22: these are long-time ratings
        first_of_1 = query(conn, "select min(rated_at) from marts.fct_ratings where user_id = 1")
    finally:
        conn.close()
    assert str(first_of_1[0][0].date()) == "1997-09-22"
    add_ratings(settings, [
        (1, 1, 2.5, "2026-11-01T10:00:00Z"),      # re-rates Toy Story: not a new rater
        (1, 1682, 4.0, "2026-11-01T11:00:00Z"),   # a movie with one rating
        (2, 50, 5.0, "1998-03-15T12:00:00Z"),      # an old month is recomputed
        (944, 50, 4.5, "2026-11-02T09:00:00Z"),    # a new app user: new stage
        (944, 181, 3.0, "2026-11-02T09:05:00Z"),
        (944, 100, 3.5, "2026-12-20T09:00:00Z"),   # past the user's 30 days: long-time
    ])

    night = transform.transform(settings, docs=False)

    # the additive totals rewrote only the touched movies
    assert rows_written(night, "int_movie_rating_totals") == 5
    assert rows_written(night, "int_ratings_aggregated_to_users") == 3
    incremental = snapshot(settings)
    transform.transform(settings, docs=False, full_refresh=True)
    assert_same(incremental, snapshot(settings))

    conn = warehouse.connect(settings)
    try:
        # a re-rating counts as a rating, not as a new rater
        assert query(conn, """select rating_count, rater_count from marts.dim_movies
                              where movie_id = 1""") == [(453, 452)]
        assert query(conn, """select new_stage_rating_count, rating_count
                              from intermediate.int_ratings_aggregated_to_users
                              where user_id = 944""") == [(2, 3)]
    finally:
        conn.close()

    # a second night: nothing new writes nothing and still matches
    quiet = transform.transform(settings, docs=False)
    assert rows_written(quiet, "int_movie_rating_totals") == 0
    assert rows_written(quiet, "fct_ratings") == 0
    assert_same(snapshot(settings), incremental)

    # the weekly rebuild night: every model over fct_ratings in full, fct_ratings itself
    # incremental (nothing new: no row written), and still the same rows
    weekly = transform.transform(dataclasses.replace(settings, dbt_rebuild_day="alw"),
                                 docs=False, logical_date=datetime.datetime(2026, 12, 5))
    assert rows_written(weekly, "fct_ratings") == 0
    assert rows_written(weekly, "int_movie_rating_totals") > 1000
    assert_same(snapshot(settings), incremental)


def test_a_rating_before_its_users_first_rebuilds_in_full(warehouse_100k, caplog):
    settings = warehouse_100k
    # user 3's first rating is in 1998-03: a 1997 rating moves their stages
    add_ratings(settings, [(3, 1, 4.0, "1997-10-01T10:00:00Z"),
                           (5, 2, 3.0, "2026-11-03T10:00:00Z")])

    with caplog.at_level(logging.INFO, logger="moviesforyou.transformation.transform"):
        night = transform.transform(settings, docs=False)

    assert "predates its user's first counted rating" in caplog.text
    assert rows_written(night, "int_movie_rating_totals") > 1000
    assert rows_written(night, "fct_ratings") == 2  # the ratings table itself incremental
    built = snapshot(settings)
    transform.transform(settings, docs=False, full_refresh=True)
    assert_same(built, snapshot(settings))
