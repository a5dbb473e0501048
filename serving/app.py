"""The MoviesForYou API and web page.

Run it with ``moviesforyou serve`` (or ``uvicorn serving.app:app``); the
OpenAPI page is at ``/docs``, the web page at ``/``. It reads the published
``recs`` tables as the read-only role (see ``serving/db.py`` for settings), so
it answers from the last good publish while a new one is being built; every
answer that carries recommendations names the ``model_version`` and
``publish_id`` that made it. The only writes, sign-up and ratings, go through
two narrow ``security definer`` functions of the warehouse.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import json
import re
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from moviesforyou.foundation.config import Settings
from serving import auth, db, live
from serving.cache import AnswerCache, following
from serving.schemas import NewRatings, NewUser

STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 10

MovieId = Annotated[int, PathParam(ge=1, le=2_147_483_647, description="MovieLens movie id")]
UserId = Annotated[int, PathParam(ge=1, le=2_147_483_647, description="MovieLens or app user id")]
K = Annotated[int, Query(ge=1, le=100, description="How many movies")]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings.from_env()  # the API's entry point builds the settings once
    app.state.settings = settings
    app.state.pool = await db.create_pool(settings)
    app.state.writes = auth.RateLimiter(settings.api.write_limit)
    app.state.live = live.LiveModels()
    try:
        cache = AnswerCache(settings.api.cache_size, settings.api.cache_ttl)
        async with following(cache, app.state.pool, settings.api.cache_seconds):
            app.state.cache = cache
            yield
    finally:
        await app.state.pool.close()


app = FastAPI(
    title="MoviesForYou",
    version="1.0",
    summary="Personalised movie recommendations, refreshed nightly from MovieLens.",
    description=("Lookups on the published `recs` tables of the warehouse. Recommendation "
                 "answers carry the `model_version` and `publish_id` that produced them."),
    lifespan=lifespan,
)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


class ServerTiming:
    """Pure ASGI middleware (no per-request task, unlike ``@app.middleware``) that adds
    ``Server-Timing: app;dur=<ms>``, the time from the request to its response headers,
    which the browser's developer tools show and ``benchmarks/page_latency.py`` reads."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - start) * 1000
                message["headers"] = [*message.get("headers", []),
                                      (b"server-timing", f"app;dur={spent:.2f}".encode())]
            await send(message)

        return await self.app(scope, receive, timed)


@app.exception_handler(RequestValidationError)
async def readable_validation_error(request: Request, exc: RequestValidationError):
    """422 with one readable sentence per problem, plus FastAPI's structured list."""
    problems, errors = [], []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where}: {error.get('msg')}")
        errors.append({"loc": list(error.get("loc", ())), "msg": error.get("msg"),
                       "type": error.get("type"), "input": str(error.get("input"))[:200]})
    return JSONResponse(status_code=422, content={"detail": "; ".join(problems),
                                                  "errors": errors})


def _pool(request: Request):
    return request.app.state.pool


async def _dataset(conn, request: Request) -> str:
    """The release being served: the live publish's (``MFY_DATASET`` before the first).

    Read in the request's own connection, so a request never mixes two releases.
    """
    return await conn.fetchval(db.LIVE_DATASET) or request.app.state.settings.dataset


def _movie(row) -> dict:
    return {"movie_id": row["movie_id"], "title": row["title"], "year": row["release_year"],
            "genres": list(row["genres"] or []),
            "mean_rating": None if row["mean_rating"] is None else round(row["mean_rating"], 3),
            "bayesian_rating": (None if row["bayesian_rating"] is None
                                else round(row["bayesian_rating"], 3)),
            "rating_count": row["rating_count"], "imdb_url": row["imdb_url"]}


async def _version_of(conn, rows) -> dict:
    """The model and publish behind an answer: from its rows, else the live publication."""
    if rows:
        return {"model_version": rows[0]["model_version"], "publish_id": rows[0]["publish_id"]}
    live = await conn.fetchrow(db.PUBLICATION)
    if live is None:
        raise HTTPException(503, "no recommendations are published yet")
    return {"model_version": live["model_version"], "publish_id": live["publish_id"]}


async def _require_movie(conn, movie_id: int):
    row = await conn.fetchrow(db.MOVIE, movie_id)
    if row is None:
        raise HTTPException(404, f"movie {movie_id} is not in the catalogue")
    return row


async def _require_user(conn, user_id: int, dataset: str) -> None:
    if not await conn.fetchval(db.USER_EXISTS, user_id, dataset):
        raise HTTPException(404, f"user {user_id} does not exist")


# --------------------------------------------------------------------------- catalogue


@app.get("/api/movies", tags=["catalogue"])
async def list_movies(request: Request, page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                      genre: Annotated[str | None, Query(max_length=40)] = None):
    """The catalogue, 10 movies per page, optionally one genre only."""
    async with _pool(request).acquire() as conn:
        rows = await conn.fetch(db.MOVIES_PAGE, PAGE_SIZE, (page - 1) * PAGE_SIZE, genre)
    total = rows[0]["total"] if rows else 0
    return {"page": page, "per_page": PAGE_SIZE, "total": total,
            "pages": (total + PAGE_SIZE - 1) // PAGE_SIZE, "movies": [_movie(r) for r in rows]}


Sort = Literal["relevance", "year", "rating", "predicted"]


@app.get("/api/movies/search", tags=["catalogue"])
async def search_movies(
        request: Request,
        q: Annotated[str | None, Query(min_length=1, max_length=200,
                                       description="A title, typos allowed")] = None,
        genres: Annotated[list[str] | None, Query(
            max_length=20, description="Movies of all these genres")] = None,
        year_from: Annotated[int | None, Query(ge=1800, le=2200)] = None,
        year_to: Annotated[int | None, Query(ge=1800, le=2200)] = None,
        sort: Annotated[Sort | None, Query(
            description="relevance (with q, the default then), year, rating (the default "
                        "without q: Bayesian average) or predicted (needs user_id)")] = None,
        user_id: Annotated[int | None, Query(
            ge=1, le=2_147_483_647,
            description="A viewer: each movie gets their predicted rating and whether they "
                        "rated it (an app user's needs their token)")] = None,
        limit: K = 10, page: Annotated[int, Query(ge=1, le=10_000)] = 1):
    """Find films: a typo-tolerant title (popularity breaks near-ties, so "shawshenk"
    finds The Shawshank Redemption), genres, a year range, several orders; for a viewer,
    the model's predicted rating and whether they rated each film."""
    wanted = _genre_list(genres) or None
    sort = sort or ("relevance" if q else "rating")
    if sort == "relevance" and not q:
        raise HTTPException(422, "sort: relevance needs a title (q)")
    if sort == "predicted" and user_id is None:
        raise HTTPException(422, "sort: predicted needs a viewer (user_id)")
    if year_from and year_to and year_from > year_to:
        raise HTTPException(422, f"year_from {year_from} is after year_to {year_to}")
    offset = (page - 1) * limit
    async with _pool(request).acquire() as conn:
        await _check_genres(conn, "genres", wanted)
        viewer = None
        if user_id is not None:
            viewer = await _viewer(request, conn, user_id)
            if viewer is None and sort == "predicted":
                raise HTTPException(503, "the live publish cannot predict ratings yet "
                                         "(published before fold-ins existed)")
        closeness: dict[int, float] = {}
        if q:
            ranked = await _search(conn, q, 200, wanted, year_from, year_to)
            if sort != "relevance" and ranked:  # another order: only the good matches
                floor = max(0.5, ranked[0][1] - CLOSE)
                ranked = [(r, c) for r, c in ranked if c >= floor]
            closeness = {r["movie_id"]: c for r, c in ranked}
            rows = [r for r, _ in ranked]
            if sort == "year":
                rows.sort(key=lambda r: -(r["release_year"] or 0))
            elif sort == "rating":
                rows.sort(key=lambda r: -(r["bayesian_rating"] or 0))
            elif sort == "predicted":
                rows = [rows[i] for i in _best_predicted(viewer, [r["movie_id"] for r in rows])]
            total, rows = len(rows), rows[offset:offset + limit]
        elif sort == "predicted":
            ids = sorted(r["movie_id"] for r in await conn.fetch(db.BROWSE_IDS, wanted,
                                                                 year_from, year_to))
            total = len(ids)
            ids = [ids[i] for i in _best_predicted(viewer, ids)[offset:offset + limit]]
            found = {r["movie_id"]: r for r in await conn.fetch(db.MOVIES_BY_ID, ids)}
            rows = [found[m] for m in ids if m in found]
        else:
            rows = await conn.fetch(db.BROWSE, wanted, year_from, year_to, sort, limit, offset)
            total = rows[0]["total"] if rows else 0
    predicted = viewer.of([r["movie_id"] for r in rows]) if viewer is not None else []
    movies = []
    for i, row in enumerate(rows):
        movie = _movie(row)
        if q:
            movie["match"] = round(closeness[row["movie_id"]], 3)
        if viewer is not None:
            movie["predicted_rating"] = (None if np.isnan(predicted[i])
                                         else round(float(predicted[i]), 2))
            movie["rated"] = row["movie_id"] in viewer.rated
        movies.append(movie)
    return {"query": q, "genres": wanted or [], "year_from": year_from, "year_to": year_to,
            "sort": sort, "user_id": user_id, "page": page, "per_page": limit, "total": total,
            "movies": movies}


async def _viewer(request: Request, conn, user_id: int):
    """The viewer's predictions (see :func:`serving.live.viewer_predictions`), after
    checking they exist and, for an app user, that the request carries their token."""
    dataset = await _dataset(conn, request)
    await _require_user(conn, user_id, dataset)
    if await conn.fetchval(db.HAS_TOKEN, user_id):
        await auth.require_owner(conn, request, user_id)
    return await live.viewer_predictions(request.app.state.live, conn, user_id, dataset,
                                         await conn.fetchval(db.PENDING, user_id))


def _best_predicted(viewer: live.Predictions, movie_ids: list[int]) -> np.ndarray:
    """Positions of ``movie_ids``, highest predicted rating first (ties and movies the
    model does not have keep their order, at the end)."""
    predicted = np.nan_to_num(viewer.of(movie_ids), nan=-np.inf)
    return np.argsort(-predicted, kind="stable")


@app.get("/api/movies/{movie_id}", tags=["catalogue"])
async def get_movie(request: Request, movie_id: MovieId):
    """One movie's details."""
    async with _pool(request).acquire() as conn:
        return _movie(await _require_movie(conn, movie_id))


@app.get("/api/genres", tags=["catalogue"])
async def list_genres(request: Request):
    async with _pool(request).acquire() as conn:
        return {"genres": [r["genre"] for r in await conn.fetch(db.GENRES)]}


@app.get("/api/signup-options", tags=["users"])
async def signup_options(request: Request):
    """What sign-up can use on the live release: the cold-start lists it publishes.

    A release without a user file (the CSV releases) has no age/gender or occupation
    lists, so ``demographics`` is false and sign-up asks for genres only.
    """
    async with _pool(request).acquire() as conn:
        rows = await conn.fetch(db.COLD_START_LISTS)
        version = await _version_of(conn, [])
        dataset = await _dataset(conn, request)
    lists = {r["list_type"]: list(r["segments"]) for r in rows}
    return {"dataset": dataset, "lists": sorted(lists),
            "demographics": "age_gender" in lists or "occupation" in lists,
            "genres": lists.get("genre", []), "occupations": lists.get("occupation", []),
            "age_gender_segments": lists.get("age_gender", []), **version}


@app.get("/api/occupations", tags=["catalogue"])
async def list_occupations(request: Request):
    async with _pool(request).acquire() as conn:
        return {"occupations": [r["occupation"] for r in await conn.fetch(db.OCCUPATIONS)]}


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


async def _search(conn, text: str, limit: int, genres: list[str] | None = None,
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


# --------------------------------------------------------------------------- recommendations


async def _similar(conn, movie_id: int, k: int) -> dict:
    rows = await conn.fetch(db.SIMILAR, movie_id, k)
    return {**await _version_of(conn, rows),
            "similar": [{"rank": r["rank"], **_movie(r), "similarity": round(r["similarity"], 4)}
                        for r in rows]}


@app.get("/api/movies/{movie_id}/similar", tags=["recommendations"])
async def similar_to_movie(request: Request, movie_id: MovieId, k: K = 10):
    """Movies like this one (``recs.similar_movies``, from the model's movie factors)."""
    async with _pool(request).acquire() as conn:
        movie = await _require_movie(conn, movie_id)
        return {"movie": _movie(movie), **await _similar(conn, movie_id, k)}


@app.get("/api/similar", tags=["recommendations"])
async def similar_to_title(request: Request,
                           title: Annotated[str, Query(min_length=1, max_length=200)],
                           k: K = 10):
    """"You liked this film": the best title match, and movies like it."""
    async with _pool(request).acquire() as conn:
        matches = [row for row, _ in await _search(conn, title, 5)]
        if not matches:
            raise HTTPException(404, f"no movie title looks like {title!r}")
        best = matches[0]
        return {"query": title, "movie": _movie(best),
                "other_matches": [_movie(r) for r in matches[1:]],
                **await _similar(conn, best["movie_id"], k)}


def _genre_list(values: list[str] | None) -> list[str]:
    """Genres from repeated or comma-separated query values."""
    return sorted({g.strip() for v in values or [] for g in v.split(",") if g.strip()})


async def _check_genres(conn, field: str, genres) -> None:
    """422 naming the unknown genres and listing the known ones."""
    if not genres:
        return
    known = {r["genre"] for r in await conn.fetch(db.GENRES)}
    unknown = sorted(set(genres) - known)
    if unknown:
        raise HTTPException(422, f"{field}: unknown genre(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(known))}")


@app.get("/api/users/{user_id}/recommendations", tags=["recommendations"],
         response_class=Response,
         responses={200: {"content": {"application/json": {"example": {
             "user_id": 1, "model_version": "3", "publish_id": 12, "exclude_genres": ["Drama"],
             "recommendations": [{"rank": 1, "movie_id": 474, "title": "Dr. Strangelove",
                                  "year": 1963, "genres": ["Sci-Fi", "War"], "score": 0.87,
                                  "predicted_rating": 4.46, "source": "als"}]}}}}})
async def recommend(request: Request, user_id: UserId, k: K = 10,
                    exclude_genres: Annotated[list[str] | None, Query(max_length=20)] = None):
    """Top-k movies for a user; newcomers get cold-start lists (``source`` says which).

    A viewer who rated films through the API since the publish gets a list folded
    in against the live model at once (``source`` ``als-live``, and
    ``folded_in_ratings`` says from how many ratings); the next nightly run
    re-trains with their ratings and takes over."""
    excluded = _genre_list(exclude_genres)
    cache, key = request.app.state.cache, (user_id, k, tuple(excluded))
    body = cache.get(key)
    if body is None:
        async with _pool(request).acquire() as conn:
            await _check_genres(conn, "exclude_genres", excluded)
            row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, k, excluded)
            made = await _made_now(request, conn, user_id, k, excluded, row)
            if made:  # kept until they rate again, or the next publish
                cache.put(key, *made)
                return Response(content=made[1], media_type="application/json")
            if not row["personal"]:
                await _require_user(conn, user_id, await _dataset(conn, request))
                if not row["n"]:
                    await _version_of(conn, [])  # 503 when nothing is published yet
        body = row["body"].encode()
        if row["personal"]:  # newcomers' lists change with every rating they post
            cache.put(key, row["publish_id"], body)
    return Response(content=body, media_type="application/json")


async def _made_now(request: Request, conn, user_id: int, k: int, excluded: list[str],
                    row) -> tuple[int, bytes] | None:
    """(publish id, JSON answer) of a list the stored rows ``row`` (``db.RECOMMEND_JSON``)
    cannot give as they are, made now; None when they can:

    * the viewer rated films since the publish: folded in against the live model;
    * a user the model knows, whose stored list ran short of ``k`` (excluded genres,
      ``k`` above the stored length): the rest scored in NumPy from the live model
      (serving/live.py), or by recs.recommend in SQL when the publish has none."""
    state = request.app.state
    if row["pending"]:
        folded = await live.recommend(state.live, conn, user_id,
                                      await _dataset(conn, request), k, excluded)
        if folded:
            return folded
    if not (row["known"] and row["n"] < k):
        return None
    topped = await live.top_up(state.live, conn, user_id, await _dataset(conn, request), k,
                               excluded, json.loads(row["body"]))
    if topped:
        return topped
    async with conn.transaction():
        await conn.execute(db.SQL_TOP_UP)
        row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, k, excluded)
    return row["publish_id"], row["body"].encode()


class LookupFastPath:
    """Pure ASGI middleware for the one request that carries the load,
    ``GET /api/users/{id}/recommendations`` with at most ``k`` in its query: the same
    answer as :func:`recommend` (one statement, Postgres writes the JSON) without
    FastAPI's routing, validation and response objects, which cost more than the
    lookup itself (``benchmarks/api_load.py``). Anything else, an invalid value
    included, and any answer that is not a stored personal list (newcomers, viewers
    with ratings since the publish, errors) goes through :func:`recommend`."""

    PATH = re.compile(rb"/api/users/([1-9][0-9]{0,9})/recommendations")
    QUERY = re.compile(rb"(?:k=([1-9][0-9]{0,2}))?")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        body = None
        if scope["type"] == "http" and scope["method"] == "GET":
            path = self.PATH.fullmatch(scope.get("raw_path") or scope["path"].encode())
            query = self.QUERY.fullmatch(scope.get("query_string", b""))
            if path and query:
                user_id, k = int(path[1]), int(query[1] or 10)
                if user_id <= 2_147_483_647 and k <= 100:
                    body = await self._stored(scope["app"].state, user_id, k)
        if body is None:
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _stored(state, user_id: int, k: int) -> bytes | None:
        key = (user_id, k, ())
        body = state.cache.get(key)
        if body is not None:
            return body
        try:
            async with state.pool.acquire() as conn:
                row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, k, [])
        except Exception:  # recommend() answers it, with its own error handling
            return None
        if not row["personal"] or row["pending"] or row["n"] < k:  # short: recommend() tops up
            return None
        body = row["body"].encode()
        state.cache.put(key, row["publish_id"], body)
        return body


#: The season of each month, as the cold-start season lists name them (dbt's season_of).
_SEASON = {12: "Winter", 1: "Winter", 2: "Winter", 3: "Spring", 4: "Spring", 5: "Spring",
           6: "Summer", 7: "Summer", 8: "Summer", 9: "Autumn", 10: "Autumn", 11: "Autumn"}


_TRENDING = "rated most in the last 30 days, the newest ratings counting most"


def _section(key: str, title: str, reason: str, rows, k: int) -> dict | None:
    """One section of the recommendations page (None when it has no film), each film
    once, at most ``k``."""
    movies, seen = [], set()
    for row in rows:
        movie = row if isinstance(row, dict) else _movie(row)
        if movie["movie_id"] not in seen and len(movies) < k:
            seen.add(movie["movie_id"])
            movies.append(movie)
    return {"key": key, "title": title, "reason": reason, "movies": movies} if movies else None


@app.get("/api/users/{user_id}/sections", tags=["recommendations"])
async def user_sections(request: Request, user_id: UserId,
                        k: Annotated[int, Query(ge=1, le=50)] = 10):
    """The recommendations page in sections, each with the reason it is there: the
    model's picks (``recs.recommend``'s list, folded in live after new ratings),
    "Because you rated ⟨title⟩" (that film's similar movies), the favourite genre,
    popular this season, trending, popular with people like you (where the release or the
    sign-up gives age, gender or occupation) and in their region (from the ZIP code, once
    the nightly run has the user). Films the user rated are left out; an
    app user's sections reveal their ratings, so they need their token."""
    return (await _sections_and_list(request, user_id, k, k))[0]


async def _sections_and_list(request: Request, user_id: int, k: int,
                             n: int) -> tuple[dict, dict]:
    """The sections (``k`` films each) and the ranked list they start from (``n`` films,
    as ``/recommendations`` answers it), from one lookup and at most one fold-in."""
    async with _pool(request).acquire() as conn:
        dataset = await _dataset(conn, request)
        await _require_user(conn, user_id, dataset)
        if await conn.fetchval(db.HAS_TOKEN, user_id):
            await auth.require_owner(conn, request, user_id)
        row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, max(k, n), [])
        if not row["n"] and not row["known"]:
            await _version_of(conn, [])  # 503 when nothing is published yet
        made = await _made_now(request, conn, user_id, max(k, n), [], row)
        top = json.loads(made[1] if made else row["body"])
        rated = await conn.fetch(db.SECTION_RATED, user_id, dataset)
        seen = [r["movie_id"] for r in rated]
        profile = await conn.fetchrow(db.SECTION_PROFILE, user_id)
        genre = (await conn.fetchval(db.SECTION_GENRE, user_id, dataset)
                 or next(iter(profile["preferred_genres"]), None))
        anchor = next((r for r in rated if r["has_neighbours"]), None)
        season = _SEASON[dt.date.today().month]
        sections = [_section(
            "for_you", "Top picks for you",
            "what the model expects you to like most, from your ratings"
            if row["personal"] or row["known"]
            or top.get("folded_in_ratings") else "the most rated films for people who "
            "chose what you chose at sign-up, until your ratings reach the model",
            top["recommendations"], k)]
        if anchor is not None:
            sections.append(_section(
                "because", f"Because you rated {anchor['title']}",
                f"films people who liked {anchor['title']} also liked, and of its genres",
                await conn.fetch(db.SECTION_SIMILAR, anchor["movie_id"], seen, k), k))
        if genre is not None:
            sections.append(_section(
                "genre", f"Your favourite genre: {genre}",
                "the genre of most of your good ratings" if rated
                else "a genre you chose at sign-up",
                await conn.fetch(db.SECTION_IN_GENRE, user_id, genre, seen, k), k))
        sections.append(_section(
            "season", f"Popular this {season.lower()}",
            f"the films rated most in {season.lower()} months",
            await conn.fetch(db.SECTION_LIST, "season", season, seen, k), k))
        sections.append(_section(
            "trending", "Trending", _TRENDING,
            await conn.fetch(db.SECTION_LIST, "trending", "all", seen, k), k))
        for list_type, segment in (("age_gender", profile["age_gender"]),
                                   ("occupation", profile["occupation"])):
            if segment is not None:
                like = _section(
                    "like_you", "Popular with people like you",
                    f"the films rated most by people of your {list_type.replace('_', ' and ')}"
                    f" ({segment})",
                    await conn.fetch(db.SECTION_LIST, list_type, segment, seen, k), k)
                if like is not None:
                    sections.append(like)
                    break
        if profile["region"] is not None:
            where = profile["region"] if profile["region"] == "Canada" else \
                f"the {profile['region']}"
            sections.append(_section(
                "region", f"Popular in {where}",
                f"the films rated most by people in your region ({profile['region']}, "
                "from your ZIP code)",
                await conn.fetch(db.SECTION_LIST, "region", profile["region"], seen, k), k))
    return ({"user_id": user_id, "model_version": top["model_version"],
             "publish_id": top["publish_id"], "season": season,
             "sections": [s for s in sections if s is not None]},
            {**top, "recommendations": top["recommendations"][:n]})


@app.get("/api/users/{user_id}/page", tags=["recommendations"])
async def user_page_data(request: Request, user_id: UserId,
                         k: Annotated[int, Query(ge=1, le=50)] = 6, n: K = 20):
    """Everything the user page shows, in one request: its sections (``k`` films each,
    as ``/sections``), the whole ranked list (``n`` films, as ``/recommendations``) and
    the newest ratings (as ``/ratings``). An app user's needs their token."""
    sections, ranked = await _sections_and_list(request, user_id, k, n)
    ratings = await user_ratings(request, user_id, 1)
    return {**sections, "recommendations": ranked["recommendations"],
            "list": {key: value for key, value in ranked.items() if key != "recommendations"},
            "ratings": ratings}


@app.get("/api/home", tags=["catalogue"])
async def home(request: Request, k: Annotated[int, Query(ge=1, le=50)] = 10,
               genres: Annotated[int, Query(ge=0, le=30)] = 4):
    """The home page's rows, in one request: the best rated films (Bayesian average),
    trending (the last 30 days of ratings, decayed), this season's most rated, and the
    most rated of the ``genres`` biggest genres."""
    season = _SEASON[dt.date.today().month]
    async with _pool(request).acquire() as conn:
        version = await _version_of(conn, [])
        rows = [
            _section("top", "Top films", "the best rated, by a Bayesian average that "
                     "needs many ratings to rank high",
                     await conn.fetch(db.BROWSE, None, None, None, "rating", k, 0), k),
            _section("trending", "Trending", _TRENDING,
                     await conn.fetch(db.SECTION_LIST, "trending", "all", [], k), k),
            _section("season", f"Popular this {season.lower()}",
                     f"the films rated most in {season.lower()} months",
                     await conn.fetch(db.SECTION_LIST, "season", season, [], k), k)]
        for genre in [r["segment"] for r in await conn.fetch(db.HOME_GENRES, genres)]:
            rows.append(_section(f"genre:{genre}", genre, f"the most rated {genre} films",
                                 await conn.fetch(db.SECTION_LIST, "genre", genre, [], k), k))
    return {**version, "season": season, "rows": [r for r in rows if r is not None]}


@app.get("/api/users/{user_id}/predicted-rating/{movie_id}", tags=["recommendations"])
async def predicted_rating(request: Request, user_id: UserId, movie_id: MovieId):
    """The rating the model expects this user to give this movie."""
    async with _pool(request).acquire() as conn:
        await _require_user(conn, user_id, await _dataset(conn, request))
        movie = await _require_movie(conn, movie_id)
        value = await conn.fetchval(db.PREDICT, user_id, movie_id)
        version = await _version_of(conn, [])
    if value is None:
        raise HTTPException(404, f"the model has no factors for movie {movie_id}")
    return {"user_id": user_id, "movie_id": movie_id, "title": movie["title"],
            "predicted_rating": round(value, 3), **version}


@app.get("/api/users/{user_id}/ratings", tags=["users"])
async def user_ratings(request: Request, user_id: UserId,
                       page: Annotated[int, Query(ge=1, le=100_000)] = 1):
    """The movies a user rated, newest first, 10 per page; ``pending`` ratings came
    through the API and reach the marts with the next nightly run."""
    async with _pool(request).acquire() as conn:
        dataset = await _dataset(conn, request)
        await _require_user(conn, user_id, dataset)
        if await conn.fetchval(db.HAS_TOKEN, user_id):  # an app user's history is theirs
            await auth.require_owner(conn, request, user_id)
        rows = await conn.fetch(db.USER_RATINGS, user_id, dataset, PAGE_SIZE,
                                (page - 1) * PAGE_SIZE)
    total = rows[0]["total"] if rows else 0
    return {"user_id": user_id, "page": page, "per_page": PAGE_SIZE, "total": total,
            "ratings": [{"movie_id": r["movie_id"], "title": r["title"],
                         "year": r["release_year"], "genres": list(r["genres"] or []),
                         "rating": r["rating"], "rated_at": r["rated_at"],
                         "pending": r["pending"]} for r in rows]}


# --------------------------------------------------------------------------- writes


@app.post("/api/users", status_code=201, tags=["users"])
async def sign_up(request: Request, user: NewUser, k: K = 10):
    """Sign a newcomer up; the answer has their first (cold-start) recommendations and
    their ``token``, shown only this once: rating and reading their history need it
    (``Authorization: Bearer <token>``)."""
    request.app.state.writes.check(auth.client_address(request))
    token, hashed = auth.new_token()
    async with _pool(request).acquire() as conn:
        await _check_genres(conn, "preferred_genres", user.preferred_genres)
        async with conn.transaction():
            user_id = await conn.fetchval(db.SIGN_UP, await _dataset(conn, request), user.age,
                                          user.gender, user.occupation, user.zip_code,
                                          user.preferred_genres, hashed)
    answer = json.loads((await recommend(request, user_id, k)).body)
    return {**answer, "profile": user.model_dump(), "token": token}


@app.post("/api/users/{user_id}/ratings", status_code=202, tags=["users"])
async def rate(request: Request, user_id: UserId, body: Annotated[NewRatings, Body()]):
    """Store ratings: the user's next recommendations are folded in with them, and the
    next nightly run re-trains the model with them. Needs the user's token from
    sign-up (``Authorization: Bearer <token>``)."""
    movie_ids = [r.movie_id for r in body.ratings]
    async with _pool(request).acquire() as conn:
        hashed = await auth.require_owner(conn, request, user_id)
        request.app.state.writes.check(f"token:{hashed}", auth.client_address(request))
        dataset = await _dataset(conn, request)
        known = {r["movie_id"] for r in await conn.fetch(db.KNOWN_MOVIES, movie_ids)}
        missing = sorted(set(movie_ids) - known)
        if missing:
            raise HTTPException(404, f"movie(s) not in the catalogue: "
                                     f"{', '.join(map(str, missing))}")
        async with conn.transaction():
            ids = [await conn.fetchval(db.SUBMIT_RATING, hashed, dataset,
                                       r.movie_id, r.rating) for r in body.ratings]
    request.app.state.cache.forget_user(user_id)
    return {"user_id": user_id, "stored": len(ids), "app_rating_ids": ids,
            "message": ("Thanks! Your recommendations now take these ratings into account; "
                        "the next nightly run learns from them too.")}


@app.delete("/api/tokens/current", status_code=204, tags=["users"])
async def revoke_token(request: Request):
    """Revoke the token the request carries; it stops working at once."""
    hashed = auth.bearer_hash(request)
    async with _pool(request).acquire() as conn:
        if hashed is None or not await conn.fetchval(db.REVOKE_TOKEN, hashed):
            raise HTTPException(401, "invalid or revoked token", headers=auth.BEARER)
    return Response(status_code=204)


# --------------------------------------------------------------------------- health


@app.get("/api/health", tags=["health"])
async def health(request: Request):
    """Liveness plus what is being served: model version, publish time, data freshness."""
    async with _pool(request).acquire() as conn:
        live = await conn.fetchrow(db.PUBLICATION)
        if live is None:
            return JSONResponse(status_code=503, content={
                "status": "no recommendations published yet"})
        extra = await conn.fetchrow(db.HEALTH, live["publish_id"], live["dataset"])
    now = dt.datetime.now(dt.UTC)
    published_at = extra["published_at"]
    return {"status": "ok", "dataset": live["dataset"], "model_name": live["model_name"],
            "model_version": live["model_version"], "publish_id": live["publish_id"],
            "mlflow_run_id": live["mlflow_run_id"], "published_at": published_at,
            "published_hours_ago": (None if published_at is None
                                    else round((now - published_at).total_seconds() / 3600, 2)),
            "recommendations_per_user": live["recommendations_per_user"],
            "data_freshness": {"ratings_through": live["ratings_through"],
                               "source_loaded_at": live["source_loaded_at"],
                               "last_source_check_at": extra["last_source_check_at"],
                               "last_app_rating_at": extra["last_app_rating_at"]}}


# --------------------------------------------------------------------------- web page


@app.get("/", include_in_schema=False)
@app.get("/signup", include_in_schema=False)
@app.get("/find", include_in_schema=False)
async def page() -> FileResponse:
    """The single-page app; its script picks the view from the path."""
    return FileResponse(STATIC / "index.html")


@app.get("/users/{user_id}", include_in_schema=False)
async def user_page(user_id: UserId) -> FileResponse:
    return FileResponse(STATIC / "index.html")


# the lookup's fast path inside, so that its answers carry Server-Timing too
app.add_middleware(LookupFastPath)
app.add_middleware(ServerTiming)
