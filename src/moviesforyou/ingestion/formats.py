"""Parsers for the three MovieLens file layouts, into the ``raw`` tables.

Every release, whatever its layout, lands in the same tables with the same
columns (see :data:`RAW_TABLES`); a column a release lacks is null. Each parser
checks every line: field count, types, the rating scale, that ratings, tags
and links refer to known users and movies, that a rating's time is possible
(not before MovieLens began in 1995, not in the future) and that no user rates
a movie twice. The first problem raises
:class:`~moviesforyou.foundation.errors.SourceError` naming the file, line and field.

Layouts, from the READMEs GroupLens ships with each release:

``100k``
    ``u.data`` tab-separated; ``u.item``/``u.user``/``u.genre`` ``|``-separated;
    ``u.occupation`` one name a line. Latin-1. Genres are 19 0/1 flags.
``1m``
    ``ratings.dat``, ``movies.dat``, ``users.dat``, ``::``-separated, latin-1.
    Age and occupation are codes listed in the release's README.
``csv``
    ``ratings.csv``, ``movies.csv``, ``tags.csv``, ``links.csv``: UTF-8 CSV
    with a header. Half-star ratings.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import IO

from moviesforyou.ingestion.parsing import (
    Context,
    RatingChecks,
    Row,
    TableSource,
    Where,
    check_ids,
    check_unique,
    parse_rating,
    read_lines,
    split_fields,
)

#: The raw tables and their data columns (``dataset``, ``load_id`` and
#: ``loaded_at`` are added to every one).
RAW_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "genres": (("genre_id", "integer not null"), ("genre", "text not null")),
    "occupations": (("occupation_id", "integer not null"), ("occupation", "text not null")),
    "movies": (
        ("movie_id", "integer not null"),
        ("title", "text not null"),
        ("genres", "text not null"),
        ("release_date", "text"),
        ("video_release_date", "text"),
        ("imdb_url", "text"),
    ),
    "users": (
        ("user_id", "integer not null"),
        ("gender", "text not null"),
        ("age", "integer"),  # years (100K)
        ("age_band_code", "integer"),  # 1M's code: 1, 18, 25, 35, 45, 50, 56
        ("occupation_id", "integer"),
        ("occupation", "text"),
        ("zip_code", "text"),
    ),
    "ratings": (
        ("user_id", "integer not null"),
        ("movie_id", "integer not null"),
        ("rating", "numeric(2,1) not null"),
        ("rated_at_epoch", "bigint not null"),
    ),
    "tags": (
        ("user_id", "integer not null"),
        ("movie_id", "integer not null"),
        ("tag", "text not null"),
        ("tagged_at_epoch", "bigint not null"),
    ),
    "links": (
        ("movie_id", "integer not null"),
        ("imdb_id", "text"),
        ("tmdb_id", "integer"),
    ),
}

#: Genres of ml-1m (its README) and of the CSV releases (theirs).
GENRES_1M = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
GENRES_CSV = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western", "(no genres listed)",
)
#: ml-1m's occupation codes, from its README.
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
AGE_BANDS_1M = {1, 18, 25, 35, 45, 50, 56}


# --------------------------------------------------------------------------- 100K


def _100k_genres(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    found: dict[int, str] = {}
    for line in read_lines(handle, "latin-1", where):
        name, number = split_fields(line, "|", ("genre", "genre_id"), where)
        found[where.int(number, "genre_id")] = name
    if sorted(found) != list(range(len(found))):
        raise where.fail(f"genre ids must run 0..{len(found) - 1}", "genre_id")
    ctx.genres = tuple(found[i] for i in range(len(found)))
    yield from sorted(found.items())


def _100k_occupations(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    for index, line in enumerate(read_lines(handle, "latin-1", where)):
        yield index, line.strip()


def _100k_movies(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    names = ("movie_id", "title", "release_date", "video_release_date", "imdb_url",
             *(f"genre:{g}" for g in ctx.genres))
    for line in read_lines(handle, "latin-1", where):
        fields = split_fields(line, "|", names, where)
        movie = where.int(fields[0], "movie_id")
        flags = fields[5:]
        for flag, name in zip(flags, names[5:], strict=True):
            if flag not in ("0", "1"):
                raise where.fail(f"genre flag must be 0 or 1, not {flag!r}", name)
        genres = "|".join(g for g, flag in zip(ctx.genres, flags, strict=True) if flag == "1")
        check_unique(movie, ctx.movie_ids, where, "movie_id")
        yield (movie, fields[1], genres, fields[2] or None, fields[3] or None, fields[4] or None)


def _100k_users(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    ctx.user_ids = set()
    names = ("user_id", "age", "gender", "occupation", "zip_code")
    for line in read_lines(handle, "latin-1", where):
        user, age, gender, occupation, zip_code = split_fields(line, "|", names, where)
        user_id = where.int(user, "user_id")
        if gender not in ("M", "F"):
            raise where.fail(f"gender must be M or F, not {gender!r}", "gender")
        check_unique(user_id, ctx.user_ids, where, "user_id")
        yield (user_id, gender, where.int(age, "age"), None, None, occupation, zip_code)


def _delimited_ratings(sep: str) -> Callable[[IO[bytes], str, Context], Iterator[Row]]:
    """Ratings of the 100K (tab) and 1M (``::``) layouts: whole stars, latin-1."""

    def parse(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
        where = Where(path)
        names = ("user_id", "movie_id", "rating", "timestamp")
        checks = RatingChecks(where, "user_id", "movie_id")
        for line in read_lines(handle, "latin-1", where):
            user, movie, rating, stamp = split_fields(line, sep, names, where)
            user_id, movie_id = where.int(user, "user_id"), where.int(movie, "movie_id")
            check_ids(user_id, movie_id, ctx, where)
            rated_at = where.int(stamp, "timestamp")
            checks.check(user_id, movie_id, rated_at)
            yield (user_id, movie_id, parse_rating(rating, where, half_stars=False), rated_at)
        checks.finish()

    return parse


def _movie_row(where: Where, ctx: Context, fields: tuple[str, str, str], id_field: str,
               allowed: tuple[str, ...]) -> Row:
    """A movie of the 1M or CSV layout: id, title and a '|'-list of known genres."""
    movie, title, genres = fields
    movie_id = where.int(movie, id_field)
    for genre in genres.split("|"):
        if genre not in allowed:
            raise where.fail(f"unknown genre {genre!r}", "genres")
    check_unique(movie_id, ctx.movie_ids, where, id_field)
    return (movie_id, title, genres, None, None, None)


# --------------------------------------------------------------------------- 1M


def _fixed_list(values: tuple[str, ...]) -> Callable[[IO[bytes], str, Context], Iterator[Row]]:
    def parse(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
        yield from enumerate(values)

    return parse


def _1m_movies(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    ctx.genres = GENRES_1M
    for line in read_lines(handle, "latin-1", where):
        fields = split_fields(line, "::", ("movie_id", "title", "genres"), where)
        yield _movie_row(where, ctx, tuple(fields), "movie_id", GENRES_1M)


def _1m_users(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    ctx.user_ids = set()
    names = ("user_id", "gender", "age", "occupation", "zip_code")
    for line in read_lines(handle, "latin-1", where):
        user, gender, age, occupation, zip_code = split_fields(line, "::", names, where)
        user_id, age_code = where.int(user, "user_id"), where.int(age, "age")
        code = where.int(occupation, "occupation")
        if gender not in ("M", "F"):
            raise where.fail(f"gender must be M or F, not {gender!r}", "gender")
        if age_code not in AGE_BANDS_1M:
            raise where.fail(f"age code {age_code} is not one of {sorted(AGE_BANDS_1M)}", "age")
        if not 0 <= code < len(OCCUPATIONS_1M):
            raise where.fail(f"occupation code {code} is not in 0..20", "occupation")
        check_unique(user_id, ctx.user_ids, where, "user_id")
        yield (user_id, gender, None, age_code, code, OCCUPATIONS_1M[code], zip_code)


# --------------------------------------------------------------------------- CSV


def _csv_rows(handle: IO[bytes], where: Where, header: tuple[str, ...]) -> Iterator[list[str]]:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.reader(text)
    try:
        first = next(reader, None)
        where.line = reader.line_num
        if first is None or tuple(c.lstrip("\ufeff") for c in first) != header:
            raise where.fail(f"expected the header {','.join(header)}, found {first!r}")
        for row in reader:
            where.line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise where.fail(
                    f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}"
                )
            yield row
    except UnicodeDecodeError as exc:
        raise where.fail(f"not valid UTF-8: {exc.reason}") from None
    except csv.Error as exc:
        raise where.fail(f"malformed CSV: {exc}") from None


def _csv_movies(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    ctx.genres = GENRES_CSV
    for fields in _csv_rows(handle, where, ("movieId", "title", "genres")):
        yield _movie_row(where, ctx, tuple(fields), "movieId", GENRES_CSV)


def _csv_ratings(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    header = ("userId", "movieId", "rating", "timestamp")
    checks = RatingChecks(where, "userId", "movieId")
    for user, movie, rating, stamp in _csv_rows(handle, where, header):
        user_id, movie_id = where.int(user, "userId"), where.int(movie, "movieId")
        check_ids(None, movie_id, ctx, where)
        rated_at = where.int(stamp, "timestamp")
        checks.check(user_id, movie_id, rated_at)
        yield (user_id, movie_id, parse_rating(rating, where, half_stars=True), rated_at)
    checks.finish()


def _csv_tags(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    header = ("userId", "movieId", "tag", "timestamp")
    for user, movie, tag, stamp in _csv_rows(handle, where, header):
        movie_id = where.int(movie, "movieId")
        check_ids(None, movie_id, ctx, where)
        yield (where.int(user, "userId"), movie_id, tag, where.int(stamp, "timestamp"))


def _csv_links(handle: IO[bytes], path: str, ctx: Context) -> Iterator[Row]:
    where = Where(path)
    for movie, imdb, tmdb in _csv_rows(handle, where, ("movieId", "imdbId", "tmdbId")):
        movie_id = where.int(movie, "movieId")
        check_ids(None, movie_id, ctx, where)
        if imdb and not imdb.isdigit():
            raise where.fail(f"not an IMDb number: {imdb!r}", "imdbId")
        yield (movie_id, imdb or None, where.optional_int(tmdb, "tmdbId"))


#: Load order matters: movies and users before the files that refer to them.
LAYOUTS: dict[str, tuple[TableSource, ...]] = {
    "100k": (
        TableSource("genres", "u.genre", _100k_genres),
        TableSource("occupations", "u.occupation", _100k_occupations),
        TableSource("movies", "u.item", _100k_movies),
        TableSource("users", "u.user", _100k_users),
        TableSource("ratings", "u.data", _delimited_ratings("\t")),
    ),
    "1m": (
        TableSource("genres", None, _fixed_list(GENRES_1M)),
        TableSource("occupations", None, _fixed_list(OCCUPATIONS_1M)),
        TableSource("movies", "movies.dat", _1m_movies),
        TableSource("users", "users.dat", _1m_users),
        TableSource("ratings", "ratings.dat", _delimited_ratings("::")),
    ),
    "csv": (
        TableSource("genres", None, _fixed_list(GENRES_CSV)),
        TableSource("movies", "movies.csv", _csv_movies),
        TableSource("ratings", "ratings.csv", _csv_ratings),
        TableSource("tags", "tags.csv", _csv_tags, optional=True),
        TableSource("links", "links.csv", _csv_links, optional=True),
    ),
}
