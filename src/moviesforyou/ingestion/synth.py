"""A seeded generator of MovieLens-format data at any scale.

The output reads like MovieLens to the ingester and, roughly, to a model:

* item popularity follows a power law (Zipf, exponent ``popularity_exponent``);
* user activity is long-tailed (log-normal), with at least 20 ratings a user as
  in the real releases;
* ratings come from latent factors plus user and item biases and noise, the
  generative story ALS assumes; movies' factors lean towards their genres;
* every movie has one to three genres, users have age, gender, occupation and a
  zip code, and each user rates over a span of time inside a range of years.

Ratings are produced one block of users at a time and written as they are made
(``pyarrow.csv``), so 25M ratings need a few hundred MB of memory, not GBs.
The same ``SynthSpec`` (seed included) always gives the same bytes.

Layouts: ``100k`` (``u.data``, ``u.item``, ``u.user``, ``u.genre``,
``u.occupation``), ``1m`` (``ratings.dat``, ``movies.dat``, ``users.dat``,
``::``-separated, with the age-band and occupation codes of the ml-1m README) and
``csv`` (``ratings.csv``, ``movies.csv``, ``tags.csv``, ``links.csv``; half
stars, no user file, as ml-latest-small, ml-25m and ml-32m).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from moviesforyou.ingestion.formats import AGE_BANDS_1M, GENRES_1M, GENRES_CSV, OCCUPATIONS_1M

#: ml-100k's genre list (u.genre) and occupations (u.occupation).
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
OCCUPATIONS_100K = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other",
    "programmer", "retired", "salesman", "scientist", "student", "technician", "writer",
)
#: Relative frequency of each genre (index into the 18 common genres, 100K order minus unknown).
_GENRE_WEIGHTS = np.array(
    [10, 6, 2, 3, 20, 5, 2, 28, 1, 1, 4, 2, 3, 10, 4, 9, 3, 1], dtype=float
)
_WORDS = (
    "Midnight", "River", "Dream", "City", "Last", "Summer", "Garden", "Shadow", "Stranger",
    "Journey", "Winter", "Secret", "Blue", "Heart", "Crossing", "Silence", "Storm", "Road",
    "Café", "Étoile", "Señor", "Mädchen", "Love", "Night", "Return", "House", "Game", "Story",
)
MIN_RATINGS_PER_USER = 20


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.

    Attributes:
        n_ratings: exact number of ratings to write.
        n_users: users; default scales like MovieLens (about 106 ratings a user).
        n_movies: movies; default ``17 * n_ratings ** 0.4`` (1,700 at 100K).
        seed: everything is drawn from this seed.
        rank: number of latent factors behind the ratings.
        popularity_exponent: Zipf exponent of item popularity.
        first_year, last_year: the years ratings are spread over.
        block_users: users generated per block (memory per block grows with it).
    """

    n_ratings: int = 100_000
    n_users: int | None = None
    n_movies: int | None = None
    seed: int = 42
    rank: int = 8
    popularity_exponent: float = 0.9
    first_year: int = 1996
    last_year: int = 2018
    block_users: int = 5_000

    def resolved(self) -> tuple[int, int]:
        users = self.n_users or max(10, round(self.n_ratings / 106))
        movies = self.n_movies or max(50, round(17 * self.n_ratings ** 0.4))
        if self.n_ratings < users * MIN_RATINGS_PER_USER and self.n_users is None:
            users = max(1, self.n_ratings // MIN_RATINGS_PER_USER)
        if self.n_ratings > users * movies // 2:
            raise ValueError(
                f"{self.n_ratings} ratings cannot fit {users} users x {movies} movies "
                "at under half density: raise n_users or n_movies"
            )
        return users, movies


@dataclass(frozen=True)
class SynthSummary:
    n_ratings: int
    n_users: int
    n_movies: int
    files: dict[str, str]  # name -> sha256


class _Model:
    """The latent world behind the data: users, movies, their factors and biases."""

    def __init__(self, spec: SynthSpec) -> None:
        self.spec = spec
        self.n_users, self.n_movies = spec.resolved()
        rng = np.random.default_rng([spec.seed, 1])
        m = self.n_movies
        # popularity: a random permutation of Zipf ranks, so movie 1 is not always the hit
        ranks = rng.permutation(m) + 1
        weights = ranks ** -spec.popularity_exponent
        self.popularity = weights / weights.sum()
        self.cdf = np.cumsum(self.popularity)
        self.cdf[-1] = 1.0
        # genres: 1-3 per movie; movie factors lean towards their genres
        g = len(_GENRE_WEIGHTS)
        n_genres = rng.choice([1, 2, 3], size=m, p=[0.45, 0.38, 0.17])
        p_genre = _GENRE_WEIGHTS / _GENRE_WEIGHTS.sum()
        self.genre_flags = np.zeros((m, g), dtype=bool)
        for i in range(m):
            self.genre_flags[i, rng.choice(g, size=n_genres[i], replace=False, p=p_genre)] = True
        genre_vectors = rng.normal(0, 0.6, size=(g, spec.rank))
        self.item_factors = (
            self.genre_flags @ genre_vectors / np.sqrt(n_genres)[:, None]
            + rng.normal(0, 0.35, size=(m, spec.rank))
        )
        # popular movies are a little better on average, as in MovieLens
        self.item_bias = rng.normal(0, 0.35, size=m) + 0.25 * (
            np.log(self.popularity * m) / np.log(m)
        )
        self.years = rng.integers(1930, spec.last_year + 1, size=m)
        self.years = np.where(rng.random(m) < 0.6, rng.integers(1985, spec.last_year + 1, size=m),
                              self.years)
        self.titles = [self._title(rng, i) for i in range(m)]
        # movie ids: 1..m; the CSV layout renumbers them sparsely, as the CSV releases
        # are (ml-32m: 87,585 movies with ids up to 292,757), from a stream of its own
        gaps = np.random.default_rng([spec.seed, 4]).geometric(0.3, size=m)
        self.sparse_ids = np.cumsum(gaps)
        # activity: log-normal weights, at least MIN_RATINGS_PER_USER each, exact total
        u = self.n_users
        floor = min(MIN_RATINGS_PER_USER, spec.n_ratings // u)
        activity = rng.lognormal(0, 1.1, size=u)
        counts = floor + rng.multinomial(spec.n_ratings - floor * u, activity / activity.sum())
        cap = max(floor, self.n_movies // 2)
        while (over := counts > cap).any():  # heavy users capped; the excess goes elsewhere
            spill = int((counts[over] - cap).sum())
            counts[over] = cap
            room = np.flatnonzero(counts < cap)
            counts[room] += rng.multinomial(spill, np.full(room.size, 1 / room.size))
        self.counts = counts
        start, end = (datetime(y, 1, 1, tzinfo=UTC).timestamp()
                      for y in (spec.first_year, spec.last_year + 1))
        self.start, self.end = int(start), int(end)

    @staticmethod
    def _title(rng: np.random.Generator, index: int) -> str:
        words = rng.choice(len(_WORDS), size=rng.integers(1, 4), replace=False)
        title = " ".join(_WORDS[w] for w in words)
        if rng.random() < 0.08:
            title += ", The"
        return f"{title} {index + 1}"

    def block(self, first: int, last: int) -> tuple[np.ndarray, ...]:
        """Ratings of users ``first..last-1``: (user, movie, score, timestamp) arrays.

        The score is continuous; the writer rounds it to the layout's scale."""
        spec = self.spec
        rng = np.random.default_rng([spec.seed, 2, first])
        counts = self.counts[first:last]
        n = last - first
        owner = np.repeat(np.arange(n), counts)
        movies = np.empty(owner.size, dtype=np.int64)
        # sample each user's movies without replacement, popularity-weighted:
        # draw with replacement, drop repeats, redraw the shortfall until none is left
        need = counts.copy()
        have = [np.empty(0, dtype=np.int64) for _ in range(n)]
        while need.sum():
            who = np.repeat(np.arange(n), need + need // 4 + 1)
            draws = np.searchsorted(self.cdf, rng.random(who.size), side="right")
            keys = np.unique(who * self.n_movies + draws)
            kwho, kmovie = keys // self.n_movies, keys % self.n_movies
            bounds = np.searchsorted(kwho, np.arange(n + 1))
            for user in np.flatnonzero(need):
                fresh = kmovie[bounds[user]:bounds[user + 1]]
                fresh = np.setdiff1d(fresh, have[user], assume_unique=True)
                rng.shuffle(fresh)
                have[user] = np.concatenate([have[user], fresh[: need[user]]])
            need = counts - np.array([h.size for h in have])
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for user in range(n):
            movies[offsets[user]:offsets[user + 1]] = have[user]
        user_factors = rng.normal(0, 0.45, size=(n, spec.rank))
        user_bias = rng.normal(0, 0.4, size=n)
        score = (
            3.55 + user_bias[owner] + self.item_bias[movies]
            + np.einsum("ij,ij->i", user_factors[owner], self.item_factors[movies])
            + rng.normal(0, 0.55, size=owner.size)
        )
        # each user is active over a window of the span
        span = self.end - self.start
        begin = self.start + (rng.random(n) ** 0.7 * span * 0.95).astype(np.int64)
        length = np.minimum(rng.exponential(span * 0.08, size=n).astype(np.int64) + 86_400,
                            self.end - begin - 1)
        stamps = begin[owner] + (rng.random(owner.size) * length[owner]).astype(np.int64)
        return owner + first + 1, movies + 1, score, stamps


def generate(
    out: Path,
    spec: SynthSpec,
    *,
    layout: str = "100k",
    progress: Callable[[int], None] | None = None,
) -> SynthSummary:
    """Write a release in ``layout`` to folder ``out``.

    Args:
        out: folder to write (created; existing files of the layout are replaced).
        spec: sizes and seed.
        layout: ``100k``, ``1m`` or ``csv``.
        progress: called with the number of ratings written so far.

    Returns:
        Sizes and the SHA-256 of every file written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = _Model(spec)
    rng = np.random.default_rng([spec.seed, 3])
    if layout == "1m":
        _write_1m(out, model, rng, progress)
        return _summary(out, model)
    if layout == "100k":
        _write_100k_meta(out, model, rng)
        ratings_path, delimiter, header = out / "u.data", "\t", False
    else:
        _write_csv_meta(out, model, rng)
        ratings_path, delimiter, header = out / "ratings.csv", ",", True
    options = pacsv.WriteOptions(include_header=False, delimiter=delimiter,
                                 quoting_style="none")
    stars = pa.array([f"{s / 2:.1f}" for s in range(0, 11)])
    written = 0
    with open(ratings_path, "wb") as handle, pacsv.CSVWriter(
        handle, _ratings_schema(), write_options=options
    ) as writer:
        if header:  # pyarrow would quote the names; MovieLens does not
            handle.write(",".join(_ratings_schema().names).encode() + b"\n")
        for first in range(0, model.n_users, spec.block_users):
            last = min(first + spec.block_users, model.n_users)
            users, movies, score, stamps = model.block(first, last)
            if layout == "csv":
                movies = model.sparse_ids[movies - 1]
            if layout == "100k":
                rating = pa.array(np.clip(np.rint(score), 1, 5).astype(np.int64).astype(str))
            else:  # half stars
                rating = pc.take(stars, pa.array(np.clip(np.rint(score * 2), 1, 10)
                                                 .astype(np.int64)))
            writer.write_table(pa.table(
                [pa.array(users), pa.array(movies), rating, pa.array(stamps)],
                schema=_ratings_schema(),
            ))
            written += users.size
            if progress:
                progress(written)
    return _summary(out, model)


def _summary(out: Path, model: _Model) -> SynthSummary:
    files = {p.name: _sha256(p) for p in sorted(out.iterdir()) if p.is_file()}
    return SynthSummary(int(model.counts.sum()), model.n_users, model.n_movies, files)


def _write_1m(out: Path, model: _Model, rng: np.random.Generator,
              progress: Callable[[int], None] | None) -> None:
    """The ml-1m layout: ``::``-separated latin-1 files, whole stars, coded demographics.

    pyarrow's CSV writer takes one-character delimiters only, so the rows are
    formatted block by block with NumPy string operations.
    """
    with open(out / "movies.dat", "w", encoding="latin-1", newline="\n") as f:
        for i in range(model.n_movies):
            genres = "|".join(g for g, flag in zip(GENRES_1M, model.genre_flags[i], strict=True)
                              if flag)
            f.write(f"{i + 1}::{model.titles[i]} ({model.years[i]})::{genres}\n")
    bands = np.array(sorted(AGE_BANDS_1M))
    ages = bands[rng.choice(bands.size, size=model.n_users,
                            p=[0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])]
    genders = np.where(rng.random(model.n_users) < 0.72, "M", "F")
    occupations = rng.integers(0, len(OCCUPATIONS_1M), size=model.n_users)
    zips = rng.integers(1000, 99999, size=model.n_users)
    with open(out / "users.dat", "w", encoding="latin-1", newline="\n") as f:
        for u in range(model.n_users):
            f.write(f"{u + 1}::{genders[u]}::{ages[u]}::{occupations[u]}::{zips[u]:05d}\n")
    written = 0
    with open(out / "ratings.dat", "w", encoding="latin-1", newline="\n") as f:
        for first in range(0, model.n_users, model.spec.block_users):
            last = min(first + model.spec.block_users, model.n_users)
            users, movies, score, stamps = model.block(first, last)
            stars = np.clip(np.rint(score), 1, 5).astype(np.int64)
            columns = [c.astype(str) for c in (users, movies, stars, stamps)]
            rows = columns[0]
            for column in columns[1:]:
                rows = np.char.add(np.char.add(rows, "::"), column)
            f.write("\n".join(rows.tolist()) + "\n")
            written += users.size
            if progress:
                progress(written)


#: The layouts :func:`generate` writes.
LAYOUTS = ("100k", "1m", "csv")


def _ratings_schema() -> pa.Schema:
    return pa.schema([("userId", pa.int64()), ("movieId", pa.int64()),
                      ("rating", pa.string()), ("timestamp", pa.int64())])


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_100k_meta(out: Path, model: _Model, rng: np.random.Generator) -> None:
    with open(out / "u.genre", "w", encoding="latin-1") as f:
        for i, genre in enumerate(GENRES_100K):
            f.write(f"{genre}|{i}\n")
        f.write("\n")
    with open(out / "u.occupation", "w", encoding="latin-1") as f:
        f.write("".join(f"{o}\n" for o in OCCUPATIONS_100K))
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    with open(out / "u.item", "w", encoding="latin-1", newline="\n") as f:
        for i in range(model.n_movies):
            year = model.years[i]
            released = f"{rng.integers(1, 29):02d}-{months[rng.integers(12)]}-{year}"
            flags = "|".join(["0", *("1" if x else "0" for x in model.genre_flags[i])])
            title = f"{model.titles[i]} ({year})"
            slug = title.replace(" ", "%20")
            f.write(f"{i + 1}|{title}|{released}||http://us.imdb.com/M/title-exact?{slug}|"
                    f"{flags}\n")
    ages = np.clip(rng.gamma(5.0, 5.5, size=model.n_users).astype(int) + 7, 7, 73)
    genders = np.where(rng.random(model.n_users) < 0.71, "M", "F")
    occupation_p = np.array([8, 3, 1, 10, 7, 2, 3, 2, 1, 1, 5, 3, 1, 11, 7, 1, 1, 3, 20, 3, 5],
                            dtype=float)
    occupations = rng.choice(len(OCCUPATIONS_100K), size=model.n_users,
                             p=occupation_p / occupation_p.sum())
    zips = rng.integers(1000, 99999, size=model.n_users)
    with open(out / "u.user", "w", encoding="latin-1", newline="\n") as f:
        for u in range(model.n_users):
            f.write(f"{u + 1}|{ages[u]}|{genders[u]}|{OCCUPATIONS_100K[occupations[u]]}|"
                    f"{zips[u]:05d}\n")


def _write_csv_meta(out: Path, model: _Model, rng: np.random.Generator) -> None:
    # the 18 shared genres in CSV spelling ("Children" not "Children's")
    names = [g for g in GENRES_CSV if g not in ("IMAX", "(no genres listed)")]
    with open(out / "movies.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for i in range(model.n_movies):
            genres = "|".join(n for n, flag in zip(names, model.genre_flags[i], strict=True)
                              if flag)
            writer.writerow([model.sparse_ids[i], f"{model.titles[i]} ({model.years[i]})",
                             genres or "(no genres listed)"])
    with open(out / "links.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "imdbId", "tmdbId"])
        for i in range(model.n_movies):
            tmdb = "" if rng.random() < 0.01 else str(1000 + i)
            writer.writerow([model.sparse_ids[i], f"{100000 + i:07d}", tmdb])
    vocabulary = ("funny", "atmospheric", "classic", "twist ending", "visually appealing",
                  "dark comedy", "based on a book", "sci-fi", "quirky", "thought-provoking")
    n_tags = max(1, model.spec.n_ratings // 30)
    tag_users = rng.integers(1, model.n_users + 1, size=n_tags)
    tag_movies = model.sparse_ids[np.searchsorted(model.cdf, rng.random(n_tags), side="right")]
    tag_words = rng.integers(len(vocabulary), size=n_tags)
    stamps = rng.integers(model.start, model.end, size=n_tags)
    with open(out / "tags.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["userId", "movieId", "tag", "timestamp"])
        for row in zip(tag_users, tag_movies, tag_words, stamps, strict=True):
            writer.writerow([row[0], row[1], vocabulary[row[2]], row[3]])
