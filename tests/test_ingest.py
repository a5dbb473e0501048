"""Ingesting real and hand-made MovieLens releases into the raw schema."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import FIXTURES, query
from moviesforyou.ingestion import ingest, sources

pytestmark = pytest.mark.integration

#: titles in u.item with a non-ASCII (latin-1) character, e.g. "Misérables, Les (1995)"
ACCENTED_TITLES_100K = 9


def load(conn, source: Path, dataset: str, tmp_path: Path, **kwargs) -> ingest.LoadResult:
    files = sources.open_source(source, tmp_path / "downloads")
    try:
        return ingest.load_release(conn, files, dataset, **kwargs)
    finally:
        files.close()


def test_real_ml100k(conn, ml100k, tmp_path):
    result = load(conn, ml100k, "ml-100k", tmp_path)

    assert result.status == "loaded"
    assert result.row_counts == {
        "genres": 19, "occupations": 21, "movies": 1682, "users": 943, "ratings": 100_000,
    }
    counts = dict(query(conn, """
        select 'ratings', count(*) from raw.ratings union all
        select 'users', count(distinct user_id) from raw.users union all
        select 'movies', count(distinct movie_id) from raw.movies union all
        select 'genres', count(*) from raw.genres"""))
    assert counts == {"ratings": 100_000, "users": 943, "movies": 1682, "genres": 19}
    # latin-1 decoded: accented titles intact
    assert query(conn, "select count(*) from raw.movies where title ~ '[^[:ascii:]]'") == [
        (ACCENTED_TITLES_100K,)]
    assert query(conn, "select title from raw.movies where title = %s",
                 ("Misérables, Les (1995)",)) == [("Misérables, Les (1995)",)]
    # the 19 genre flags became the genre list, in u.genre's order
    assert query(conn, "select genres from raw.movies where movie_id = 1") == [
        ("Animation|Children's|Comedy",)]
    assert query(conn, "select min(rating), max(rating), sum(rating) from raw.ratings")[0][:2] \
        == (1, 5)
    assert query(conn, "select age, gender, occupation, zip_code from raw.users "
                       "where user_id = 1") == [(24, "M", "technician", "85711")]
    # the ledger knows what was loaded, from where and by whom
    ledger = query(conn, "select dataset, status, files->>'u.data', row_counts->>'ratings', "
                         "loaded_by from ops.source_loads")
    assert ledger[0][:4] == ("ml-100k", "loaded",
                             "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                             "100000")
    assert ledger[0][4].startswith("mfy_owner (")


def test_same_release_twice_leaves_one_copy(conn, ml100k, tmp_path):
    first = load(conn, ml100k, "ml-100k", tmp_path)
    second = load(conn, ml100k, "ml-100k", tmp_path)
    forced = load(conn, ml100k, "ml-100k", tmp_path, force=True)

    assert (first.status, second.status, forced.status) == ("loaded", "unchanged", "loaded")
    assert query(conn, "select count(*) from raw.ratings") == [(100_000,)]
    assert query(conn, "select distinct load_id from raw.ratings") == [(forced.load_id,)]
    assert query(conn, "select status from ops.source_loads order by load_id") == [
        ("loaded",), ("unchanged",), ("loaded",)]


def test_changed_file_replaces_the_old_release(conn, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(FIXTURES / "ml-1m-mini", release)
    load(conn, release, "ml-1m", tmp_path)
    with open(release / "ratings.dat", "a", encoding="latin-1") as f:
        f.write("4::1::2::978294300\n")

    result = load(conn, release, "ml-1m", tmp_path)

    assert result.status == "loaded"
    assert query(conn, "select count(*), count(distinct load_id) from raw.ratings") == [(11, 1)]
    assert query(conn, "select load_id from raw.ratings limit 1") == [(result.load_id,)]


def test_releases_live_side_by_side(conn, ml100k, tmp_path):
    load(conn, ml100k, "ml-100k", tmp_path)
    load(conn, FIXTURES / "ml-latest-mini", "ml-latest-small", tmp_path)

    assert query(conn, "select dataset, count(*) from raw.ratings group by 1 order by 1") == [
        ("ml-100k", 100_000), ("ml-latest-small", 9)]


def test_ml1m_format(conn, tmp_path):
    result = load(conn, FIXTURES / "ml-1m-mini", "ml-1m", tmp_path)

    assert result.row_counts == {"genres": 18, "occupations": 21, "movies": 5, "users": 4,
                                 "ratings": 10}
    assert query(conn, "select title, genres from raw.movies where movie_id = 5") == [
        ("Cité des enfants perdus, La (1995)", "Adventure|Sci-Fi")]
    # age stays the release's band code; occupation code is named from the README
    assert query(conn, "select gender, age, age_band_code, occupation_id, occupation, zip_code "
                       "from raw.users where user_id = 2") == [
        ("M", None, 56, 16, "self-employed", "70072")]
    assert query(conn, "select rated_at_epoch from raw.ratings where user_id = 1 "
                       "and movie_id = 1") == [(978300760,)]


def test_ml_latest_format(conn, tmp_path):
    result = load(conn, FIXTURES / "ml-latest-mini", "ml-latest-small", tmp_path)

    assert result.row_counts == {"genres": 20, "movies": 6, "ratings": 9, "tags": 3, "links": 6}
    assert query(conn, "select title from raw.movies where movie_id = 3") == [
        ("Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",)]
    assert query(conn, "select tag from raw.tags order by tagged_at_epoch") == [
        ("pixar",), ("dark hero",), ('Heath Ledger, "Joker"',)]
    assert query(conn, "select imdb_id, tmdb_id from raw.links where movie_id in (1, 5) "
                       "order by movie_id") == [("0114709", 862), ("0105946", None)]
    assert query(conn, "select rating from raw.ratings where user_id = 2 and movie_id = 4") \
        == [(pytest.approx(0.5),)]
    # a release without a users file has no users partition
    assert query(conn, "select count(*) from raw.users") == [(0,)]


def test_zip_with_top_folder(conn, tmp_path):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in (FIXTURES / "ml-1m-mini").iterdir():
            z.write(path, f"ml-1m/{path.name}")

    result = load(conn, archive, "ml-1m", tmp_path)

    assert result.row_counts["ratings"] == 10
    assert query(conn, "select archive_sha256 is not null, source from ops.source_loads") == [
        (True, str(archive))]


def test_reader_role_cannot_read_raw_or_write(conn, db_settings, ml100k, tmp_path):
    import psycopg2

    from moviesforyou.foundation import warehouse

    load(conn, ml100k, "ml-100k", tmp_path)
    reader = psycopg2.connect(warehouse.reader_url(db_settings))
    try:
        with reader.cursor() as cur:
            cur.execute("select count(*) from ops.source_loads")
            assert cur.fetchone() == (1,)
        reader.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), reader.cursor() as cur:
            cur.execute("select count(*) from raw.ratings")
        reader.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), reader.cursor() as cur:
            cur.execute("delete from ops.source_loads")
    finally:
        reader.close()
