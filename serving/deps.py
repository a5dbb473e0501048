"""What every router shares: the request's pool and release, the movie JSON shape,
path and query types, and the checks that answer 404 or 422.

SQL lives in :mod:`serving.db`; each router takes what it needs from here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query, Request
from fastapi import Path as PathParam

from serving import db

PAGE_SIZE = 10


MovieId = Annotated[int, PathParam(ge=1, le=2_147_483_647, description="MovieLens movie id")]


UserId = Annotated[int, PathParam(ge=1, le=2_147_483_647, description="MovieLens or app user id")]


K = Annotated[int, Query(ge=1, le=100, description="How many movies")]


def pool(request: Request):
    return request.app.state.pool


async def live_dataset(conn, request: Request) -> str:
    """The release being served: the live publish's (``MFY_DATASET`` before the first).

    Read in the request's own connection, so a request never mixes two releases.
    """
    return await conn.fetchval(db.LIVE_DATASET) or request.app.state.settings.dataset


def movie_json(row) -> dict:
    return {"movie_id": row["movie_id"], "title": row["title"], "year": row["release_year"],
            "genres": list(row["genres"] or []),
            "mean_rating": None if row["mean_rating"] is None else round(row["mean_rating"], 3),
            "bayesian_rating": (None if row["bayesian_rating"] is None
                                else round(row["bayesian_rating"], 3)),
            "rating_count": row["rating_count"], "imdb_url": row["imdb_url"]}


async def version_of(conn, rows) -> dict:
    """The model and publish behind an answer: from its rows, else the live publication."""
    if rows:
        return {"model_version": rows[0]["model_version"], "publish_id": rows[0]["publish_id"]}
    live = await conn.fetchrow(db.PUBLICATION)
    if live is None:
        raise HTTPException(503, "no recommendations are published yet")
    return {"model_version": live["model_version"], "publish_id": live["publish_id"]}


async def require_movie(conn, movie_id: int):
    """The film ``movie_id`` names: itself, else the film a duplicate entry of the release
    was merged into (rare, so looked up only then)."""
    row = await conn.fetchrow(db.MOVIE, movie_id)
    if row is None:
        row = await conn.fetchrow(db.MERGED_MOVIE, movie_id)
    if row is None:
        raise HTTPException(404, f"movie {movie_id} is not in the catalogue")
    return row


async def require_user(conn, user_id: int, dataset: str) -> None:
    if not await conn.fetchval(db.USER_EXISTS, user_id, dataset):
        raise HTTPException(404, f"user {user_id} does not exist")


def genre_list(values: list[str] | None) -> list[str]:
    """Genres from repeated or comma-separated query values."""
    return sorted({g.strip() for v in values or [] for g in v.split(",") if g.strip()})


async def check_genres(conn, field: str, genres) -> None:
    """422 naming the unknown genres and listing the known ones."""
    if not genres:
        return
    known = {r["genre"] for r in await conn.fetch(db.GENRES)}
    unknown = sorted(set(genres) - known)
    if unknown:
        raise HTTPException(422, f"{field}: unknown genre(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(known))}")
