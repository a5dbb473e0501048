"""The typo-tolerant title search: trigram candidates from Postgres, re-ranked here
by edit similarity, with numerals compared as digits and popularity breaking near-ties.
"""

from __future__ import annotations

import difflib

from serving import db


def _normalise(text: str) -> str:
    """Lower case, punctuation to spaces: 'Game, The (1997)' -> 'game the 1997'."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


_ARTICLES = ("the ", "a ", "an ", "les ", "la ", "le ", "il ", "el ", "das ", "die ")


#: Numbers as words and Roman numerals, compared as digits: "12 monkeys" is "Twelve
#: Monkeys", "godfather 2" is "Godfather: Part II". Single letters (i, v, x) are left
#: alone: they are words and initials far more often than numerals.
_NUMERALS = {
    word: str(value) for value, words in enumerate((
        (), ("one",), ("two", "ii"), ("three", "iii"), ("four", "iv"), ("five",),
        ("six", "vi"), ("seven", "vii"), ("eight", "viii"), ("nine", "ix"), ("ten",),
        ("eleven", "xi"), ("twelve", "xii"), ("thirteen", "xiii"), ("fourteen",),
        ("fifteen",), ("sixteen",), ("seventeen",), ("eighteen",), ("nineteen",),
        ("twenty",))) for word in words}


#: Words people leave out of a sequel's title: "Godfather: Part II" is "godfather 2".
_SEQUEL_WORDS = frozenset(("part", "chapter", "episode", "vol", "volume"))


def _canonical(text: str) -> str:
    """:func:`_normalise`, then numerals as digits: 'Twelve Monkeys' -> '12 monkeys'."""
    return " ".join(_NUMERALS.get(w, w) for w in _normalise(text).split())


def _closeness(query: str, row) -> float:
    """How close a typed title is to a movie, by edit similarity (0..1).

    The best of the title with and without its article, with and without the
    year, and without "part": "gmae", "game 1997" and "the game" all find
    "Game, The (1997)"; numerals compare as digits, so "godfather 2" finds
    "Godfather: Part II, The (1974)" and "12 monkeys" finds "Twelve Monkeys".
    """
    title = _canonical(row["title"])
    bare = next((title[len(a):] for a in _ARTICLES if title.startswith(a)), title)
    year = str(row["release_year"] or "")
    short = " ".join(w for w in bare.split() if w not in _SEQUEL_WORDS)  # godfather 2
    variants = {title, bare, short, f"{title} {year}", f"{bare} {year}",
                _canonical(row["original_title"] or "")}
    whole = max(difflib.SequenceMatcher(None, query, v).ratio() for v in variants if v)
    # part of a title: "shawshenk" is one word of "shawshank redemption the"
    size, words = len(query.split()), bare.split()
    parts = {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}
    part = max((difflib.SequenceMatcher(None, query, p).ratio() for p in parts), default=0.0)
    return max(whole, PART_WEIGHT * part)


#: What matching part of a title is worth against matching all of it.
PART_WEIGHT = 0.9


#: Titles this close in :func:`_closeness` tie, and the more rated one comes first.
TIE = 0.05


#: Sorted otherwise than by relevance, a title search keeps the matches this close to
#: the best one.
CLOSE = 0.2


async def search(conn, text: str, limit: int, genres: list[str] | None = None,
                  year_from: int | None = None, year_to: int | None = None,
                  ) -> list[tuple[object, float]]:
    """(movie, closeness) of the trigram candidates from Postgres, re-ranked by edit
    similarity (:func:`_closeness`); near-ties by popularity (a film rated once does
    not beat a classic by one letter)."""
    query = _canonical(text)
    if not query:
        return []
    # trigrams see the words as typed; the ranking compares numerals as digits
    candidates = await conn.fetch(db.SEARCH, _normalise(text), max(limit, 30), genres,
                                  year_from, year_to)
    scored = [(r, _closeness(query, r)) for r in candidates]
    scored.sort(key=lambda rc: (-int(rc[1] / TIE), -rc[0]["rating_count"], -rc[0]["match"],
                                rc[0]["movie_id"]))
    return scored[:limit]
