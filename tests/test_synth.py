"""The synthetic generator: exact, seeded, MovieLens-shaped, and ingestible."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import query
from moviesforyou.ingestion import ingest, sources, synth


def read_ratings(path, sep, skip):
    return np.loadtxt(path, delimiter=sep, skiprows=skip)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = synth.SynthSpec(n_ratings=20_000, seed=7)
    a = synth.generate(tmp_path / "a", spec)
    b = synth.generate(tmp_path / "b", spec)
    c = synth.generate(tmp_path / "c", synth.SynthSpec(n_ratings=20_000, seed=8))

    assert a.files == b.files
    assert a.files["u.data"] != c.files["u.data"]


def test_100k_shape_looks_like_movielens(tmp_path):
    summary = synth.generate(tmp_path, synth.SynthSpec(n_ratings=100_000))
    data = read_ratings(tmp_path / "u.data", "\t", 0)
    users, movies, ratings = data[:, 0].astype(int), data[:, 1].astype(int), data[:, 2]

    assert (summary.n_ratings, summary.n_users, summary.n_movies) == (100_000, 943, 1700)
    assert len(data) == 100_000
    assert np.unique(users * 10_000 + movies).size == 100_000  # no repeated (user, movie)
    per_user = np.bincount(users)[1:]
    assert per_user.min() >= synth.MIN_RATINGS_PER_USER
    assert np.median(per_user) < per_user.mean() < per_user.max() / 5  # long tail
    per_movie = np.sort(np.bincount(movies, minlength=1701)[1:])[::-1]
    top_decile_share = per_movie[:170].sum() / per_movie.sum()
    assert 0.35 < top_decile_share < 0.6  # ml-100k: 0.43
    assert set(np.unique(ratings)) == {1, 2, 3, 4, 5}
    assert 3.3 < ratings.mean() < 3.8  # ml-100k: 3.53
    assert (ratings == 4).mean() > (ratings == 1).mean() * 3
    years = (data[:, 3] / (365.25 * 86400) + 1970).astype(int)
    assert years.max() - years.min() >= 10  # spread over years


def test_latent_structure_is_learnable(tmp_path):
    """Ratings come from factors plus biases: item means are stable across user halves."""
    synth.generate(tmp_path, synth.SynthSpec(n_ratings=100_000))
    data = read_ratings(tmp_path / "u.data", "\t", 0)
    halves = [data[data[:, 0] % 2 == k] for k in (0, 1)]
    means = []
    for half in halves:
        sums = np.bincount(half[:, 1].astype(int), weights=half[:, 2], minlength=1701)
        counts = np.bincount(half[:, 1].astype(int), minlength=1701)
        means.append(np.where(counts >= 20, sums / np.maximum(counts, 1), np.nan))
    both = ~np.isnan(means[0]) & ~np.isnan(means[1])
    assert np.corrcoef(means[0][both], means[1][both])[0, 1] > 0.6


def test_exact_count_at_other_sizes(tmp_path):
    for n in (1_234, 57_001):
        summary = synth.generate(tmp_path / str(n), synth.SynthSpec(n_ratings=n, seed=n),
                                 layout="csv")
        lines = (tmp_path / str(n) / "ratings.csv").read_text().splitlines()
        assert lines[0] == "userId,movieId,rating,timestamp"
        assert len(lines) - 1 == summary.n_ratings == n


def test_impossible_density_is_refused():
    with pytest.raises(ValueError, match="cannot fit"):
        synth.SynthSpec(n_ratings=10_000, n_users=10, n_movies=100).resolved()


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["100k", "csv"])
def test_ingests_cleanly(conn, tmp_path, layout):
    summary = synth.generate(tmp_path / "release", synth.SynthSpec(n_ratings=25_000),
                             layout=layout)
    files = sources.open_source(tmp_path / "release", tmp_path)

    result = ingest.load_release(conn, files, f"synthetic-{layout}")

    assert result.row_counts["ratings"] == 25_000
    assert result.row_counts["movies"] == summary.n_movies
    if layout == "100k":
        assert result.row_counts["users"] == summary.n_users
        assert query(conn, "select count(*) from raw.movies where title ~ '[^[:ascii:]]'")[0][0] > 0
    else:
        assert result.row_counts["tags"] > 0
        assert query(conn, "select count(distinct rating) from raw.ratings") == [(10,)]
