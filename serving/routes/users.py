"""Viewers: sign-up and its options, ratings in and out, tokens."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response

from serving import auth, db, page_queries
from serving.deps import (
    PAGE_SIZE,
    K,
    UserId,
    check_genres,
    live_dataset,
    pool,
    require_user,
    version_of,
)
from serving.routes.recommendations import recommend
from serving.schemas import NewRatings, NewUser

router = APIRouter(tags=["users"])


@router.get("/api/signup-options")
async def signup_options(request: Request):
    """What sign-up can use on the live release: the cold-start lists it publishes.

    A release without a user file (the CSV releases) has no age/gender or occupation
    lists, so ``demographics`` is false and sign-up asks for genres only.
    """
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(page_queries.COLD_START_LISTS)
        version = await version_of(conn, [])
        dataset = await live_dataset(conn, request)
    lists = {r["list_type"]: list(r["segments"]) for r in rows}
    return {"dataset": dataset, "lists": sorted(lists),
            "demographics": "age_gender" in lists or "occupation" in lists,
            "genres": lists.get("genre", []), "occupations": lists.get("occupation", []),
            "age_gender_segments": lists.get("age_gender", []), **version}


@router.get("/api/users/{user_id}/ratings")
async def user_ratings(request: Request, user_id: UserId,
                       page: Annotated[int, Query(ge=1, le=100_000)] = 1):
    """The movies a user rated, newest first, 10 per page; ``pending`` ratings came
    through the API and reach the marts with the next nightly run."""
    async with pool(request).acquire() as conn:
        dataset = await live_dataset(conn, request)
        await require_user(conn, user_id, dataset)
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


@router.post("/api/users", status_code=201)
async def sign_up(request: Request, user: NewUser, k: K = 10):
    """Sign a newcomer up; the answer has their first (cold-start) recommendations and
    their ``token``, shown only this once: rating and reading their history need it
    (``Authorization: Bearer <token>``)."""
    request.app.state.writes.check(auth.client_address(request))
    token, hashed = auth.new_token()
    async with pool(request).acquire() as conn:
        await check_genres(conn, "preferred_genres", user.preferred_genres)
        async with conn.transaction():
            user_id = await conn.fetchval(db.SIGN_UP, await live_dataset(conn, request), user.age,
                                          user.gender, user.occupation, user.zip_code,
                                          user.preferred_genres, hashed)
    answer = json.loads((await recommend(request, user_id, k)).body)
    return {**answer, "profile": user.model_dump(), "token": token}


@router.post("/api/users/{user_id}/ratings", status_code=202)
async def rate(request: Request, user_id: UserId, body: Annotated[NewRatings, Body()]):
    """Store ratings: the user's next recommendations are folded in with them, and the
    next nightly run re-trains the model with them. Needs the user's token from
    sign-up (``Authorization: Bearer <token>``)."""
    movie_ids = [r.movie_id for r in body.ratings]
    async with pool(request).acquire() as conn:
        hashed = await auth.require_owner(conn, request, user_id)
        request.app.state.writes.check(f"token:{hashed}", auth.client_address(request))
        dataset = await live_dataset(conn, request)
        film = {r["asked"]: r["movie_id"] for r in await conn.fetch(db.KNOWN_MOVIES, movie_ids)}
        missing = sorted(set(movie_ids) - set(film))
        if missing:
            raise HTTPException(404, f"movie(s) not in the catalogue: "
                                     f"{', '.join(map(str, missing))}")
        async with conn.transaction():
            ids = [await conn.fetchval(db.SUBMIT_RATING, hashed, dataset,
                                       film[r.movie_id], r.rating) for r in body.ratings]
    request.app.state.cache.forget_user(user_id)
    # a duplicate entry of a film counts for the film, and the answer says so
    merged = [{"movie_id": asked, "counted_as": kept}
              for asked, kept in sorted(film.items()) if asked != kept]
    return {"user_id": user_id, "stored": len(ids), "app_rating_ids": ids,
            **({"merged": merged} if merged else {}),
            "message": ("Thanks! Your recommendations now take these ratings into account; "
                        "the next nightly run learns from them too.")}


@router.delete("/api/tokens/current", status_code=204)
async def revoke_token(request: Request):
    """Revoke the token the request carries; it stops working at once."""
    hashed = auth.bearer_hash(request)
    async with pool(request).acquire() as conn:
        if hashed is None or not await conn.fetchval(db.REVOKE_TOKEN, hashed):
            raise HTTPException(401, "invalid or revoked token", headers=auth.BEARER)
    return Response(status_code=204)
