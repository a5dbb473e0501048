"""The catalogue: movies, search, genres, occupations."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request

from serving import auth, db, live, page_queries
from serving.deps import (
    PAGE_SIZE,
    K,
    MovieId,
    check_genres,
    genre_list,
    live_dataset,
    movie_json,
    pool,
    require_movie,
    require_user,
)
from serving.search import CLOSE, search

router = APIRouter(tags=["catalogue"])


@router.get("/api/movies")
async def list_movies(request: Request, page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                      genre: Annotated[str | None, Query(max_length=40)] = None):
    """The catalogue, 10 movies per page, optionally one genre only."""
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(db.MOVIES_PAGE, PAGE_SIZE, (page - 1) * PAGE_SIZE, genre)
    total = rows[0]["total"] if rows else 0
    return {"page": page, "per_page": PAGE_SIZE, "total": total,
            "pages": (total + PAGE_SIZE - 1) // PAGE_SIZE, "movies": [movie_json(r) for r in rows]}


Sort = Literal["relevance", "year", "rating", "predicted"]


@router.get("/api/movies/search")
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
    wanted = genre_list(genres) or None
    sort = sort or ("relevance" if q else "rating")
    if sort == "relevance" and not q:
        raise HTTPException(422, "sort: relevance needs a title (q)")
    if sort == "predicted" and user_id is None:
        raise HTTPException(422, "sort: predicted needs a viewer (user_id)")
    if year_from and year_to and year_from > year_to:
        raise HTTPException(422, f"year_from {year_from} is after year_to {year_to}")
    offset = (page - 1) * limit
    async with pool(request).acquire() as conn:
        await check_genres(conn, "genres", wanted)
        viewer = None
        if user_id is not None:
            viewer = await viewer_of(request, conn, user_id)
            if viewer is None and sort == "predicted":
                raise HTTPException(503, "the live publish cannot predict ratings yet "
                                         "(published before fold-ins existed)")
        closeness: dict[int, float] = {}
        if q:
            ranked = await search(conn, q, 200, wanted, year_from, year_to)
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
                rows = [rows[i] for i in best_predicted(viewer, [r["movie_id"] for r in rows])]
            total, rows = len(rows), rows[offset:offset + limit]
        elif sort == "predicted":
            ids = sorted(r["movie_id"] for r in await conn.fetch(db.BROWSE_IDS, wanted,
                                                                 year_from, year_to))
            total = len(ids)
            ids = [ids[i] for i in best_predicted(viewer, ids)[offset:offset + limit]]
            found = {r["movie_id"]: r for r in await conn.fetch(db.MOVIES_BY_ID, ids)}
            rows = [found[m] for m in ids if m in found]
        else:
            rows = await conn.fetch(db.BROWSE, wanted, year_from, year_to, sort, limit, offset)
            total = rows[0]["total"] if rows else 0
    predicted = viewer.of([r["movie_id"] for r in rows]) if viewer is not None else []
    movies = []
    for i, row in enumerate(rows):
        movie = movie_json(row)
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


async def viewer_of(request: Request, conn, user_id: int):
    """The viewer's predictions (see :func:`serving.live.viewer_predictions`), after
    checking they exist and, for an app user, that the request carries their token."""
    dataset = await live_dataset(conn, request)
    await require_user(conn, user_id, dataset)
    if await conn.fetchval(db.HAS_TOKEN, user_id):
        await auth.require_owner(conn, request, user_id)
    return await live.viewer_predictions(request.app.state.live, conn, user_id, dataset,
                                         await conn.fetchval(db.PENDING, user_id))


def best_predicted(viewer: live.Predictions, movie_ids: list[int]) -> np.ndarray:
    """Positions of ``movie_ids``, highest predicted rating first (ties and movies the
    model does not have keep their order, at the end)."""
    predicted = np.nan_to_num(viewer.of(movie_ids), nan=-np.inf)
    return np.argsort(-predicted, kind="stable")


@router.get("/api/movies/{movie_id}")
async def get_movie(request: Request, movie_id: MovieId):
    """One movie's details."""
    async with pool(request).acquire() as conn:
        return movie_json(await require_movie(conn, movie_id))


@router.get("/api/genres")
async def list_genres(request: Request):
    async with pool(request).acquire() as conn:
        return {"genres": [r["genre"] for r in await conn.fetch(db.GENRES)]}


@router.get("/api/occupations")
async def list_occupations(request: Request):
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(page_queries.OCCUPATIONS)
        return {"occupations": [r["occupation"] for r in rows]}
