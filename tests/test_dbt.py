"""The dbt project, built for real on the embedded warehouse.

The ml-100k checks share one built warehouse (module scope); tests that change
data get their own database.
"""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from conftest import FIXTURES, ROOT, fresh_database, query
from moviesforyou.foundation import warehouse
from moviesforyou.foundation.config import Settings
from moviesforyou.ingestion import ingest, sources
from moviesforyou.publishing import recs_build
from moviesforyou.transformation import transform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The real ml-100k in the marts: 1,682 catalogue entries are 1,663 films (19 listed
#: twice), and its 100,000 ratings 99,693 (307 viewers rated a film under both ids).
RATINGS, FILMS = 99_693, 1663


def ingest_folder(settings: Settings, folder, dataset: str, **kwargs) -> None:
    conn = warehouse.connect(settings)
    try:
        ingest.load_release(conn, sources.open_source(folder, settings.home), dataset, **kwargs)
    finally:
        conn.close()


def rows(settings: Settings, statement: str, params=()) -> list[tuple]:
    conn = warehouse.connect(settings)
    try:
        return query(conn, statement, params)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def built_100k(embedded_settings, ml100k):
    with fresh_database(embedded_settings) as settings:
        ingest_folder(settings, ml100k, "ml-100k")
        summary = transform.transform(settings)
        yield settings, summary


def test_build_passes_with_every_kind_of_node(built_100k):
    settings, summary = built_100k

    counts = summary.build.counts()
    assert set(counts) <= {"success", "pass", "no-op"}
    kinds = {r["unique_id"].split(".")[0] for r in summary.build.results}
    assert {"model", "seed", "test", "unit_test"} <= kinds
    unit_tests = [r for r in summary.build.results if r["unique_id"].startswith("unit_test.")]
    assert len(unit_tests) >= 5 and all(r["status"] == "pass" for r in unit_tests)
    assert summary.docs_path.exists()
    assert (transform.target_dir(settings) / "catalog.json").exists()


def test_star_schema_sizes(built_100k):
    settings, _ = built_100k
    assert rows(settings, """
        select (select count(*) from marts.fct_ratings),
               (select count(*) from marts.dim_users),
               (select count(*) from marts.dim_movies),
               (select count(*) from marts.dim_genres)""") == [(RATINGS, 943, FILMS, 18)]


def test_every_rating_joins_its_dimensions(built_100k):
    settings, _ = built_100k
    assert rows(settings, """
        select count(*) from marts.fct_ratings f
        join marts.dim_users u using (user_sk)
        join marts.dim_movies m using (movie_sk)
        join marts.dim_dates d using (date_sk)""") == [(RATINGS,)]


def test_most_rated_movie_is_star_wars(built_100k):
    settings, _ = built_100k
    assert rows(settings, """
        select title, release_year, original_title, rating_count from marts.dim_movies
        order by rating_count desc limit 1""") == [("Star Wars", 1977, "Star Wars (1977)", 583)]


def test_titles_and_demographics_are_parsed(built_100k):
    settings, _ = built_100k
    assert rows(settings, "select title, release_year, release_date::text, genre_list "
                          "from marts.dim_movies where movie_id = 1") == [
        ("Toy Story", 1995, "1995-01-01", "Animation, Children, Comedy")]
    assert rows(settings, "select title from marts.dim_movies where original_title = %s",
                ("Game, The (1997)",)) == [("The Game",)]
    assert rows(settings, "select age_years, age_band, gender, occupation, zip_region "
                          "from marts.dim_users where user_id = 1") == [
        (24, "18-24", "M", "technician", "West")]


def test_marts_answer_the_business_questions(built_100k):
    settings, _ = built_100k
    # top movies need the minimum vote count
    assert rows(settings, "select min(rating_count) >= 50, count(*) > 20 "
                          "from marts.mart_top_movies") == [(True, True)]
    # every user is in month 0 of exactly one cohort
    assert rows(settings, "select sum(active_users), bool_and(retention_rate = 1) from "
                          "marts.mart_user_retention_cohorts where months_since_first = 0") == [
        (943, True)]
    # genre shares add up to 1 each month
    assert rows(settings, "select bool_and(abs(s - 1) < 0.001) from (select sum(share_of_month) "
                          "s from marts.mart_genre_popularity_monthly group by rating_month) x"
                ) == [(True,)]
    assert rows(settings, "select sum(rating_count) from marts.mart_ratings_by_demographics "
                          "where demographic = 'gender'") == [(RATINGS,)]
    assert rows(settings, "select sum(rating_count) from marts.mart_new_vs_longtime_users") == [
        (RATINGS,)]
    assert rows(settings, "select count(*) from marts.mart_user_segments") == [(943,)]


def test_reader_role_reads_the_marts(built_100k):
    import psycopg2

    settings, _ = built_100k
    reader = psycopg2.connect(warehouse.reader_url(settings))
    try:
        with reader.cursor() as cur:
            cur.execute("select count(*) from marts.mart_top_movies where rank <= 20")
            assert cur.fetchone() == (20,)
    finally:
        reader.close()


def test_app_ratings_are_added_incrementally(embedded_settings):
    with fresh_database(embedded_settings) as settings:
        settings = dataclasses.replace(settings, dataset="ml-1m")
        ingest_folder(settings, FIXTURES / "ml-1m-mini", "ml-1m")
        transform.transform(settings, docs=False)
        before = rows(settings, "select rating_sk from marts.fct_ratings order by 1")
        rows(settings, """
            insert into app.ratings (dataset, user_id, movie_id, rating, rated_at) values
                ('ml-1m', 1, 2, 4.5, '2024-05-01T12:00:00Z'),
                ('ml-1m', 3, 1, 2.0, '2024-05-02T12:00:00Z'),
                ('ml-100k', 3, 1, 2.0, '2024-05-02T12:00:00Z')
            returning app_rating_id""")

        second = transform.transform(settings, docs=False)
        third = transform.transform(settings, docs=False)

        added = rows(settings, """
            select user_id, movie_id, rating, rating_source from marts.fct_ratings
            where rating_sk <> all(%s) order by user_id""", ([r for (r,) in before],))
        assert added == [(1, 2, pytest.approx(4.5), "app"), (3, 1, pytest.approx(2.0), "app")]
        assert rows(settings, "select count(*) from marts.fct_ratings") == [(12,)]
        # the incremental run read only the two new rows; the next one re-read them
        # within the lookback window and skipped them, as already there
        fct = "model.moviesforyou.fct_ratings"
        assert {r["unique_id"]: r["rows_affected"] for r in second.build.results}[fct] == 2
        assert {r["unique_id"]: r["rows_affected"] for r in third.build.results}[fct] == 0
        assert rows(settings, "select rating_count from marts.dim_users where user_id = 3") == [
            (3,)]


def test_a_changed_release_replaces_its_ratings(embedded_settings, tmp_path):
    release = tmp_path / "ml-1m"
    shutil.copytree(FIXTURES / "ml-1m-mini", release)
    with fresh_database(embedded_settings) as settings:
        settings = dataclasses.replace(settings, dataset="ml-1m")
        ingest_folder(settings, release, "ml-1m")
        transform.transform(settings, docs=False)
        lines = (release / "ratings.dat").read_text(encoding="latin-1").splitlines()
        (release / "ratings.dat").write_text("\n".join([*lines[1:], "4::1::2::978294300"]) + "\n",
                                             encoding="latin-1")
        ingest_folder(settings, release, "ml-1m")

        transform.transform(settings, docs=False)

        assert rows(settings, "select count(*), count(distinct load_id) from marts.fct_ratings"
                    ) == [(10, 1)]
        assert rows(settings, "select count(*) from marts.fct_ratings f join raw.ratings r "
                              "on r.user_id = f.user_id and r.movie_id = f.movie_id "
                              "and r.load_id = f.load_id") == [(10,)]


def test_ml_latest_format_builds(embedded_settings):
    with fresh_database(embedded_settings) as settings:
        settings = dataclasses.replace(settings, dataset="ml-latest-small")
        ingest_folder(settings, FIXTURES / "ml-latest-mini", "ml-latest-small")

        summary = transform.transform(settings, docs=False)

        assert set(summary.build.counts()) <= {"success", "pass", "no-op"}
        assert rows(settings, "select count(*), count(*) filter (where has_demographics) "
                              "from marts.dim_users") == [(4, 0)]
        assert rows(settings, "select title, release_year, imdb_url, tmdb_id from "
                              "marts.dim_movies where movie_id = 4") == [
            ("The Dark Knight", 2008, "https://www.imdb.com/title/tt0468569/", 155)]
        assert rows(settings, "select genres from marts.dim_movies where movie_id = 6") == [([],)]
        assert rows(settings, "select count(*) from marts.dim_genres") == [(19,)]


def test_a_failing_data_test_stops_the_build_with_dbts_message(embedded_settings):
    with fresh_database(embedded_settings) as settings:
        settings = dataclasses.replace(settings, dataset="ml-1m")
        ingest_folder(settings, FIXTURES / "ml-1m-mini", "ml-1m")
        rows(settings, "insert into app.ratings (dataset, user_id, movie_id, rating) "
                       "values ('ml-1m', 1, 9999, 3) returning 1")

        with pytest.raises(transform.TransformError) as caught:
            transform.transform(settings, docs=False)

        message = str(caught.value)
        assert "relationships_fct_ratings_movie_sk__movie_sk__ref_dim_movies_" in message
        assert "Got 1 result, configured to fail if != 0" in message


def test_dbt_env_from_a_url():
    settings = Settings(home=FIXTURES, warehouse_url="postgresql://alice:s%40cret@db.example:6543/wh",
                        dataset="ml-1m")
    env = transform.dbt_env(settings)
    assert {k: env[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE",
                                "MFY_DATASET")} == {
        "PGHOST": "db.example", "PGPORT": "6543", "PGUSER": "alice", "PGPASSWORD": "s@cret",
        "PGDATABASE": "wh", "MFY_DATASET": "ml-1m"}


# --------------------------------------------------------------------------- exposures


def _models() -> dict[tuple[str, str], str]:
    """(schema, relation) -> dbt model, for the schemas consumers read."""
    out = {}
    for sql_file in (ROOT / "dbt_project" / "models").rglob("*.sql"):
        name, folder = sql_file.stem, sql_file.relative_to(ROOT / "dbt_project" / "models").parts[0]
        if folder == "marts":
            out[("marts", name)] = name
        elif folder == "ops":  # aliased to the name without the prefix
            out[("ops", name.removeprefix("ops_"))] = name
    for table, (mart, _) in recs_build.COPY_FROM_MARTS.items():
        out[("recs", table)] = mart  # the published copy of a mart
    return out


def _read_by(*paths) -> set[str]:
    """The dbt models behind every schema.table the files' SQL names."""
    text = "\n".join(p.read_text() for p in paths)
    models = _models()
    return {models[ref] for ref in re.findall(r"\b(marts|ops|recs)\.([a-z_]+)\b", text)
            if ref in models}


def _exposures() -> dict[str, set[str]]:
    import yaml

    spec = yaml.safe_load((ROOT / "dbt_project" / "models" / "exposures.yml").read_text())
    return {e["name"]: {re.fullmatch(r"ref\('(\w+)'\)", d).group(1) for d in e["depends_on"]}
            for e in spec["exposures"]}


def test_exposures_list_what_each_consumer_really_reads():
    import yaml

    exposures = _exposures()
    package = ROOT / "src" / "moviesforyou"
    sql = package / "foundation" / "sql"
    assert exposures["recommendation_api"] == _read_by(ROOT / "serving" / "db.py",
                                                       sql / "recs_functions.sql")
    copied = {mart for mart, _ in recs_build.COPY_FROM_MARTS.values()}
    assert exposures["recs_publish"] == copied | _read_by(
        *(package / "publishing").glob("*.py"),
        sql / "recs_tables.sql", sql / "recs_factors.sql", ROOT / "expectations" / "recs.yml")
    assert exposures["model_training"] == _read_by(ROOT / "spark_jobs" / "snapshot.py")
    # the dashboards: Superset's datasets (schema and table, or their SQL) and Metabase's
    models, read = _models(), set()
    for dataset in (ROOT / "dashboards" / "superset" / "datasets").rglob("*.yaml"):
        spec = yaml.safe_load(dataset.read_text())
        key = (spec.get("schema"), spec.get("table_name"))
        read |= {models[key]} if key in models else set()
        read |= _read_by(dataset) if spec.get("sql") else set()
    read |= _read_by(ROOT / "dashboards" / "metabase" / "moviesforyou.json")
    dashboards = (exposures["catalogue_dashboard"] | exposures["audience_dashboard"]
                  | exposures["health_dashboard"])
    assert dashboards == read
