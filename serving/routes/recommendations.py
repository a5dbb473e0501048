"""Recommendations: a viewer's list, similar movies, a predicted rating."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from serving import db
from serving.deps import (
    K,
    MovieId,
    UserId,
    check_genres,
    genre_list,
    live_dataset,
    movie_json,
    pool,
    require_movie,
    require_user,
    version_of,
)
from serving.exposures import exposure
from serving.pages import made_now
from serving.search import search

router = APIRouter(tags=["recommendations"])


async def similar(conn, movie_id: int, k: int) -> dict:
    rows = await conn.fetch(db.SIMILAR, movie_id, k)
    return {**await version_of(conn, rows),
            "similar": [{"rank": r["rank"], **movie_json(r),
                         "similarity": round(r["similarity"], 4)} for r in rows]}


@router.get("/api/movies/{movie_id}/similar")
async def similar_to_movie(request: Request, movie_id: MovieId, k: K = 10):
    """Movies like this one (``recs.similar_movies``, from the model's movie factors)."""
    async with pool(request).acquire() as conn:
        movie = await require_movie(conn, movie_id)  # a merged id answers with its film
        return {"movie": movie_json(movie), **await similar(conn, movie["movie_id"], k)}


@router.get("/api/similar")
async def similar_to_title(request: Request,
                           title: Annotated[str, Query(min_length=1, max_length=200)],
                           k: K = 10):
    """"You liked this film": the best title match, and movies like it."""
    async with pool(request).acquire() as conn:
        matches = [row for row, _ in await search(conn, title, 5)]
        if not matches:
            raise HTTPException(404, f"no movie title looks like {title!r}")
        best = matches[0]
        return {"query": title, "movie": movie_json(best),
                "other_matches": [movie_json(r) for r in matches[1:]],
                **await similar(conn, best["movie_id"], k)}


@router.get("/api/users/{user_id}/recommendations",
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
    excluded = genre_list(exclude_genres)
    state = request.app.state
    cache, exposures, key = state.cache, state.exposures, (user_id, k, tuple(excluded))
    cached = cache.get(key)
    if cached is not None:
        body, shown = cached
        exposures.record(user_id, shown)
        return Response(content=body, media_type="application/json")
    async with pool(request).acquire() as conn:
        await check_genres(conn, "exclude_genres", excluded)
        row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, k, excluded)
        made = await made_now(request, conn, user_id, k, excluded, row)
        if made:  # kept until they rate again, or the next publish
            publish_id, body = made
            answer = json.loads(body)
            shown = exposure(publish_id, answer["model_version"], "live",
                             [m["movie_id"] for m in answer["recommendations"]], row["arm"])
            cache.put(key, publish_id, body, shown)
            exposures.record(user_id, shown)
            return Response(content=body, media_type="application/json")
        if not row["personal"]:
            await require_user(conn, user_id, await live_dataset(conn, request))
            if not row["n"]:
                await version_of(conn, [])  # 503 when nothing is published yet
    body = row["body"].encode()
    shown = exposure(row["publish_id"], row["model_version"],
                     "stored" if row["personal"] else "cold", row["movie_ids"], row["arm"])
    if row["personal"]:  # newcomers' lists change with every rating they post
        cache.put(key, row["publish_id"], body, shown)
    exposures.record(user_id, shown)
    return Response(content=body, media_type="application/json")


@router.get("/api/users/{user_id}/predicted-rating/{movie_id}")
async def predicted_rating(request: Request, user_id: UserId, movie_id: MovieId):
    """The rating the model expects this user to give this movie."""
    async with pool(request).acquire() as conn:
        await require_user(conn, user_id, await live_dataset(conn, request))
        movie = await require_movie(conn, movie_id)
        movie_id = movie["movie_id"]  # a merged id is its film's
        value = await conn.fetchval(db.PREDICT, user_id, movie_id)
        version = await version_of(conn, [])
    if value is None:
        raise HTTPException(404, f"the model has no factors for movie {movie_id}")
    return {"user_id": user_id, "movie_id": movie_id, "title": movie["title"],
            "predicted_rating": round(value, 3), **version}
