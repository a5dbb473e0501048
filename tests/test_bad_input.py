"""Every kind of bad input names the file and line or field, and loads nothing.

Each test first loads a good release, then a bad one, and checks that the
error is precise, that the good release is still whole in ``raw``, and that the
ledger recorded the failure.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import FIXTURES, query
from moviesforyou.foundation.errors import SourceError
from moviesforyou.ingestion import ingest, sources

pytestmark = pytest.mark.integration


@pytest.fixture
def good(conn, tmp_path) -> Path:
    """A copy of the mini ml-1m release, already loaded once."""
    release = tmp_path / "ml-1m"
    shutil.copytree(FIXTURES / "ml-1m-mini", release)
    files = sources.open_source(release, tmp_path)
    ingest.load_release(conn, files, "ml-1m")
    return release


def assert_untouched(conn, error: str) -> None:
    """The good load is still live, and the failure is in the ledger."""
    assert query(conn, "select count(*), count(distinct load_id) from raw.ratings") == [(10, 1)]
    assert query(conn, "select count(*) from raw.movies") == [(5,)]
    assert query(conn, "select count(*) from raw.users") == [(4,)]
    ledger = query(conn, "select status, error from ops.source_loads order by load_id")
    assert [status for status, _ in ledger] == ["loaded", "failed"]
    assert error in ledger[-1][1]
    # no leftover half-written staging schema
    assert query(conn, "select count(*) from pg_namespace where nspname like 'raw\\_%%'") \
        == [(0,)]


def ingest_bad(conn, source: Path, tmp_path: Path, **kwargs) -> SourceError:
    with pytest.raises(SourceError) as caught:
        files = sources.open_source(source, tmp_path / "downloads", **kwargs)
        try:
            ingest.load_release(conn, files, "ml-1m")
        finally:
            files.close()
    return caught.value


def rewrite_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")


def test_malformed_row(conn, good, tmp_path):
    rewrite_line(good / "ratings.dat", 3, "1::5::4")

    error = ingest_bad(conn, good, tmp_path)

    assert str(error).startswith(f"{good / 'ratings.dat'}, line 3: expected 4 fields")
    assert error.line == 3
    assert_untouched(conn, "line 3")


def test_not_a_number(conn, good, tmp_path):
    rewrite_line(good / "users.dat", 2, "2::M::56::x::70072")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.path, error.line, error.field) == (str(good / "users.dat"), 2, "occupation")
    assert "not an integer: 'x'" in str(error)
    assert_untouched(conn, "users.dat")


def test_rating_outside_scale(conn, good, tmp_path):
    rewrite_line(good / "ratings.dat", 7, "3::3::7::978297867")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.line, error.field) == (7, "rating")
    assert "rating 7 is outside this release's scale (whole stars 1-5)" in str(error)
    assert_untouched(conn, "rating 7")


def test_half_star_in_whole_star_release(conn, good, tmp_path):
    rewrite_line(good / "ratings.dat", 1, "1::1::4.5::978300760")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.line, error.field) == (1, "rating")
    assert_untouched(conn, "4.5")


def test_unknown_user(conn, good, tmp_path):
    rewrite_line(good / "ratings.dat", 5, "99::2::2::978299026")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.path, error.line, error.field) == (str(good / "ratings.dat"), 5, "user_id")
    assert "unknown user id 99" in str(error)
    assert_untouched(conn, "unknown user id 99")


def test_unknown_movie(conn, good, tmp_path):
    rewrite_line(good / "ratings.dat", 10, "4::404::4::978294282")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.line, error.field) == (10, "movie_id")
    assert "unknown movie id 404" in str(error)
    assert_untouched(conn, "unknown movie id 404")


def test_duplicate_rating(conn, good, tmp_path):
    # line 9 repeats user 2's rating of movie 2 (line 5), with another score
    rewrite_line(good / "ratings.dat", 9, "2::2::5::978299999")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.path, error.line, error.field) == (str(good / "ratings.dat"), 9, "movie_id")
    assert "duplicate rating: user 2 already rated movie 2 on line 5" in str(error)
    assert_untouched(conn, "duplicate rating")


@pytest.mark.parametrize("stamp, problem", [
    ("-86400", "before 1995"),
    ("788918399", "before 1995"),        # 1994-12-31 23:59:59 UTC
    ("4102444800", "in the future"),     # 2100-01-01
])
def test_impossible_rating_time(conn, good, tmp_path, stamp, problem):
    rewrite_line(good / "ratings.dat", 4, f"2::1::4::{stamp}")

    error = ingest_bad(conn, good, tmp_path)

    assert (error.line, error.field) == (4, "timestamp")
    assert f"impossible rating time {stamp}" in str(error) and problem in str(error)
    assert_untouched(conn, "impossible rating time")


def test_csv_duplicate_rating_names_both_lines(conn, tmp_path):
    release = tmp_path / "latest"
    shutil.copytree(FIXTURES / "ml-latest-mini", release)
    with (release / "ratings.csv").open("a") as handle:
        handle.write("1,3,2.0,964982999\n")

    with pytest.raises(SourceError) as caught:
        ingest.load_release(conn, sources.open_source(release, tmp_path), "ml-latest-small")

    assert (caught.value.line, caught.value.field) == (11, "movieId")
    assert "user 1 already rated movie 3 on line 3" in str(caught.value)
    assert query(conn, "select count(*) from raw.ratings") == [(0,)]


def test_missing_file(conn, good, tmp_path):
    (good / "users.dat").unlink()

    error = ingest_bad(conn, good, tmp_path)

    assert "missing file(s) users.dat" in str(error)
    assert error.path == str(good)
    assert_untouched(conn, "users.dat")


def test_csv_bad_header_and_unknown_movie_in_tags(conn, tmp_path):
    release = tmp_path / "latest"
    shutil.copytree(FIXTURES / "ml-latest-mini", release)
    (release / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n2,4,dark hero,1445714994\n2,77,nope,1445714996\n")

    with pytest.raises(SourceError) as caught:
        ingest.load_release(conn, sources.open_source(release, tmp_path), "ml-latest-small")

    assert (caught.value.line, caught.value.field) == (3, "movie_id")
    (release / "tags.csv").write_text("user,movie,tag,time\n")
    with pytest.raises(SourceError, match="expected the header userId,movieId,tag,timestamp"):
        ingest.load_release(conn, sources.open_source(release, tmp_path), "ml-latest-small")
    assert query(conn, "select count(*) from raw.ratings") == [(0,)]


# ------------------------------------------------------------- write, audit, publish


def test_a_load_that_fails_its_audit_is_kept_aside_and_the_live_release_stays(conn, good,
                                                                            tmp_path):
    seen = []

    def refuse(staged: ingest.LoadResult) -> None:  # an audit that sees the staged rows
        seen.append(query(conn, f"select count(*), sum(rating) from {staged.schema}.ratings"))
        raise ValueError("user 1 may not dislike Toy Story")

    rewrite_line(good / "ratings.dat", 1, "1::1::3::978300760")  # 5 stars were 36 in all
    for attempt in (1, 2):
        with pytest.raises(ingest.LoadRejected) as caught:
            ingest.load_release(conn, sources.open_source(good, tmp_path), "ml-1m",
                                audit=refuse)
        message = str(caught.value)
        assert f"load {attempt + 1} of ml-1m" in message
        assert "kept for inspection in schema raw_rejected__ml_1m; load 1 stays live" in message
        assert "user 1 may not dislike Toy Story" in message
    assert seen == [[(10, 34)], [(10, 34)]]
    # the live release is the good one, whole
    assert query(conn, "select count(*), sum(rating), min(load_id), max(load_id) "
                       "from raw.ratings") == [(10, 36, 1, 1)]
    # the newest rejected load is kept, and only it; the ledger says where
    assert query(conn, "select load_id, status, schema_name from ops.source_loads "
                       "order by load_id") == [(1, "loaded", None), (2, "rejected", None),
                                               (3, "rejected", "raw_rejected__ml_1m")]
    assert query(conn, "select count(*), sum(rating), min(load_id) "
                       "from raw_rejected__ml_1m.ratings") == [(10, 34, 3)]
    # a load that passes goes live; the staging schema is gone
    passed = ingest.load_release(conn, sources.open_source(good, tmp_path), "ml-1m",
                                 audit=lambda staged: None)
    assert (passed.load_id, passed.status, passed.schema) == (4, "loaded", None)
    assert query(conn, "select count(*), sum(rating), min(load_id) from raw.ratings") \
        == [(10, 34, 4)]
    assert query(conn, "select nspname from pg_namespace where nspname like 'raw\\_%%'") \
        == [("raw_rejected__ml_1m",)]


def test_a_staged_load_never_audited_is_abandoned_by_the_next(conn, good, tmp_path):
    rewrite_line(good / "ratings.dat", 1, "1::1::3::978300760")  # 5 stars were 36 in all
    staged = ingest.stage_release(conn, sources.open_source(good, tmp_path), "ml-1m")
    assert (staged.status, staged.schema) == ("staged", "raw_staging__ml_1m")
    assert query(conn, "select sum(rating) from raw.ratings") == [(36,)]  # not live yet
    # the same files again (a second run at once): it goes on with the staged load
    same = ingest.stage_release(conn, sources.open_source(good, tmp_path), "ml-1m")
    assert (same.load_id, same.status, same.schema) == (2, "staged", "raw_staging__ml_1m")
    # other files: the staged load is abandoned
    rewrite_line(good / "ratings.dat", 1, "1::1::2::978300760")
    again = ingest.stage_release(conn, sources.open_source(good, tmp_path), "ml-1m")
    with pytest.raises(SourceError, match="load 2 of ml-1m is failed, not staged"):
        ingest.attach_load(conn, staged)
    ingest.attach_load(conn, again)
    assert query(conn, "select status, coalesce(error, '') like 'abandoned:%%' "
                       "from ops.source_loads order by load_id") \
        == [("loaded", False), ("failed", True), ("loaded", False)]
    assert query(conn, "select sum(rating), min(load_id) from raw.ratings") == [(33, 3)]


def test_cli_ingest_runs_the_raw_suite_before_the_load_goes_live(db_settings, ml100k,
                                                                 tmp_path):
    """Every line parses, but two users' ages are impossible: only the suite sees it."""
    import os
    import subprocess
    import sys

    from moviesforyou.foundation import warehouse

    release = tmp_path / "ml-100k"
    release.mkdir()
    for name in ("u.item", "u.data", "u.genre", "u.occupation"):
        shutil.copy(ml100k / name, release / name)
    users = (ml100k / "u.user").read_text(encoding="latin-1").splitlines()
    users[0] = "|".join(["1", "0", *users[0].split("|")[2:]])
    (release / "u.user").write_text("\n".join(users) + "\n", encoding="latin-1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env.update(MFY_HOME=str(db_settings.home), MFY_WAREHOUSE_URL=db_settings.warehouse_url)

    def ingest_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moviesforyou", "ingest", "--dataset",
                               "ml-100k", "--source", str(release), *args], env=env,
                              capture_output=True, text=True, timeout=300)

    refused = ingest_cli()
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "load 1 of ml-100k" in said and "schema raw_rejected__ml_100k" in said
    assert "raw_staging__ml_100k.users: a plausible age" in said
    assert "Traceback" not in said
    conn = warehouse.connect(db_settings)
    try:
        assert query(conn, "select count(*) from raw.ratings") == [(0,)]
        assert query(conn, "select count(*) from raw_rejected__ml_100k.users "
                           "where age = 0") == [(1,)]
        assert query(conn, "select subject, success from ops.validations") \
            == [("load:1", False)]
        loaded = ingest_cli("--no-validate")
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        assert query(conn, "select count(*) from raw.users where age = 0") == [(1,)]
        assert query(conn, "select status from ops.source_loads order by load_id") \
            == [("rejected",), ("loaded",)]
    finally:
        conn.close()


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.iterdir()):
            z.write(path, f"ml-1m/{path.name}")
    return archive


def test_truncated_zip(conn, good, tmp_path):
    archive = _zip(good, tmp_path / "ml-1m.zip")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])

    error = ingest_bad(conn, archive, tmp_path)

    assert error.path == str(archive)
    assert "not a readable zip archive (truncated or corrupt)" in str(error)
    assert query(conn, "select count(*) from raw.ratings") == [(10,)]


def test_corrupt_zip_member(conn, good, tmp_path):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(good.iterdir()):
            z.write(path, f"ml-1m/{path.name}")
    data = bytearray(archive.read_bytes())
    at = data.find(b"978300760")  # inside ratings.dat's stored bytes
    data[at] = ord("7")
    archive.write_bytes(bytes(data))

    error = ingest_bad(conn, archive, tmp_path)

    assert "corrupt zip member ml-1m/ratings.dat (CRC mismatch)" in str(error)
    assert query(conn, "select count(*) from raw.ratings") == [(10,)]


def test_pinned_checksum_mismatch(conn, good, tmp_path):
    archive = _zip(good, tmp_path / "ml-1m.zip")

    error = ingest_bad(conn, archive, tmp_path, sha256="0" * 64)

    assert error.path == str(archive)
    assert f"checksum mismatch: expected sha256 {'0' * 64}" in str(error)


def test_folder_checksum_mismatch(conn, good, tmp_path):
    (good / "SHA256SUMS").write_text(f"{'1' * 64}  ratings.dat\n")

    error = ingest_bad(conn, good, tmp_path)

    assert error.path == str(good / "ratings.dat")
    assert "checksum mismatch: SHA256SUMS says" in str(error)
