"""Reading a release's lines: the parsing rules every layout shares.

Decoding and splitting lines, ratings on the release's scale, ids and
timestamps in range, duplicate keys: each failure raises a
:class:`~moviesforyou.foundation.errors.SourceError` naming the file, the line
and the field. The layouts themselves are :mod:`moviesforyou.ingestion.formats`.
"""

from __future__ import annotations

import array
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO

from moviesforyou.foundation.errors import SourceError

Row = tuple


@dataclass
class Context:
    """What a parser has learned so far, for cross-file checks."""

    movie_ids: set[int] = field(default_factory=set)
    user_ids: set[int] | None = None  # None: the release has no user file
    genres: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSource:
    """How to fill one raw table: the file and the parser for it (None: built in)."""

    table: str
    file: str | None
    parse: Callable[[IO[bytes], str, Context], Iterator[Row]]
    #: a release may lack the file (``releases.OPTIONAL_FILES``): the table stays empty
    optional: bool = False


class Where:
    """Raises SourceError for a given file and line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.line = 0

    def fail(self, message: str, field_name: str | None = None) -> SourceError:
        return SourceError(message, path=self.path, line=self.line or None, field=field_name)

    def int(self, value: str, name: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise self.fail(f"not an integer: {value!r}", name) from None

    def optional_int(self, value: str, name: str) -> int | None:
        return self.int(value, name) if value.strip() else None


def read_lines(handle: IO[bytes], encoding: str, where: Where) -> Iterator[str]:
    text = io.TextIOWrapper(handle, encoding=encoding, newline="")
    try:
        for line in text:
            where.line += 1
            line = line.rstrip("\r\n")
            if line.strip():
                yield line
    except UnicodeDecodeError as exc:
        raise where.fail(f"not valid {encoding}: {exc.reason}") from None


def split_fields(line: str, sep: str, names: tuple[str, ...], where: Where) -> list[str]:
    fields = line.split(sep)
    if len(fields) != len(names):
        raise where.fail(
            f"expected {len(names)} fields separated by {sep!r} ({', '.join(names)}), "
            f"found {len(fields)}: {line[:80]!r}"
        )
    return fields


def parse_rating(value: str, where: Where, *, half_stars: bool) -> Decimal:
    try:
        rating = Decimal(value)
    except InvalidOperation:
        raise where.fail(f"not a number: {value!r}", "rating") from None
    if half_stars:
        ok = Decimal("0.5") <= rating <= 5 and (rating * 2) == (rating * 2).to_integral_value()
        scale = "0.5-5.0 in half stars"
    else:
        ok = 1 <= rating <= 5 and rating == rating.to_integral_value()
        scale = "whole stars 1-5"
    if not ok:
        raise where.fail(f"rating {value} is outside this release's scale ({scale})", "rating")
    return rating


def check_ids(user: int | None, movie: int, ctx: Context, where: Where) -> None:
    if ctx.user_ids is not None and user is not None and user not in ctx.user_ids:
        raise where.fail(f"unknown user id {user}: not in the release's user file", "user_id")
    if movie not in ctx.movie_ids:
        raise where.fail(f"unknown movie id {movie}: not in the release's movie file",
                         "movie_id")


#: 1995-01-01 UTC: MovieLens collected its first ratings in 1995.
FIRST_POSSIBLE_RATING = 788_918_400


class RatingChecks:
    """A ratings file's time and uniqueness checks.

    Times are checked per line. Uniqueness of (user, movie) is checked when the
    file ends: keeping a set of 25M pairs in Python would take about 2 GB, so
    each line's pair is packed into 8 bytes (and its line number into 8 more) and
    the arrays are sorted once: about 16 bytes a rating while parsing, 400 MB at
    25M, and twice that while sorting. The load is one transaction, so a
    duplicate found at the end still loads nothing.
    """

    def __init__(self, where: Where, user_field: str, movie_field: str) -> None:
        self.where = where
        self.fields = (user_field, movie_field)
        self.now = int(time.time())
        self.pairs = array.array("q")
        self.lines = array.array("q")

    def check(self, user_id: int, movie_id: int, stamp: int) -> None:
        if not FIRST_POSSIBLE_RATING <= stamp <= self.now:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) \
                if -62_135_596_800 <= stamp <= 253_402_300_799 else "out of range"
            problem = "before 1995" if stamp < FIRST_POSSIBLE_RATING else "in the future"
            raise self.where.fail(f"impossible rating time {stamp} ({when}): {problem}",
                                  "timestamp")
        self.pairs.append((user_id << 32) | (movie_id & 0xFFFFFFFF))
        self.lines.append(self.where.line)

    def finish(self) -> None:
        """Raise for the first line that repeats an earlier (user, movie) pair."""
        import numpy as np  # only once a file is read: the rest of ingest needs no numpy

        pairs = np.frombuffer(self.pairs, dtype=np.int64)
        if len(pairs) < 2:
            return
        order = np.argsort(pairs, kind="stable")
        ordered = pairs[order]
        repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not len(repeats):
            return
        lines = np.frombuffer(self.lines, dtype=np.int64)
        # the earliest line that repeats a pair, and the first line with that pair
        second = min(repeats, key=lambda i: lines[order[i + 1]])
        pair = int(ordered[second])
        first = int(lines[order[np.searchsorted(ordered, pair)]])
        self.where.line = int(lines[order[second + 1]])
        raise self.where.fail(
            f"duplicate rating: user {pair >> 32} already rated movie {pair & 0xFFFFFFFF} "
            f"on line {first}", self.fields[1])


def check_unique(key: int, seen: set[int], where: Where, name: str) -> None:
    if key in seen:
        raise where.fail(f"duplicate {name} {key}", name)
    seen.add(key)
