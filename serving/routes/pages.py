"""The pages' data in one request each (home, a viewer's sections and page), and the
single-page app itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from serving import db, page_queries
from serving.deps import K, UserId, pool, version_of
from serving.pages import TRENDING, section, sections_and_list
from serving.routes.users import user_ratings

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get("/api/users/{user_id}/sections", tags=["recommendations"])
async def user_sections(request: Request, user_id: UserId,
                        k: Annotated[int, Query(ge=1, le=50)] = 10):
    """The recommendations page in sections, each with the reason it is there: the
    model's picks (``recs.recommend``'s list, folded in live after new ratings),
    "Because you rated ⟨title⟩" (that film's similar movies), the favourite genre,
    popular this season, trending, popular with people like you (where the release or the
    sign-up gives age, gender or occupation) and in their region (from the ZIP code, once
    the nightly run has the user). Films the user rated are left out; an
    app user's sections reveal their ratings, so they need their token."""
    return (await sections_and_list(request, user_id, k, k))[0]


@router.get("/api/users/{user_id}/page", tags=["recommendations"])
async def user_page_data(request: Request, user_id: UserId,
                         k: Annotated[int, Query(ge=1, le=50)] = 6, n: K = 20):
    """Everything the user page shows, in one request: its sections (``k`` films each,
    as ``/sections``), the whole ranked list (``n`` films, as ``/recommendations``) and
    the newest ratings (as ``/ratings``). An app user's needs their token."""
    sections, ranked = await sections_and_list(request, user_id, k, n)
    ratings = await user_ratings(request, user_id, 1)
    return {**sections, "recommendations": ranked["recommendations"],
            "list": {key: value for key, value in ranked.items() if key != "recommendations"},
            "ratings": ratings}


@router.get("/api/home", tags=["catalogue"])
async def home(request: Request, k: Annotated[int, Query(ge=1, le=50)] = 10,
               genres: Annotated[int, Query(ge=0, le=30)] = 4):
    """The home page's rows, in one request: the best rated films (Bayesian average),
    trending (the last 30 days of ratings, decayed), this season's most rated, and the
    most rated of the ``genres`` biggest genres."""
    async with pool(request).acquire() as conn:
        season = await conn.fetchval(db.SEASON)
        version = await version_of(conn, [])
        rows = [
            section("top", "Top films", "the best rated, by a Bayesian average that "
                     "needs many ratings to rank high",
                     await conn.fetch(db.BROWSE, None, None, None, "rating", k, 0), k),
            section("trending", "Trending", TRENDING,
                     await conn.fetch(page_queries.SECTION_LIST, "trending", "all", [], k), k),
            section("season", f"Popular this {season.lower()}",
                     f"the films rated most in {season.lower()} months",
                     await conn.fetch(page_queries.SECTION_LIST, "season", season, [], k), k)]
        for genre in [r["segment"] for r in await conn.fetch(page_queries.HOME_GENRES, genres)]:
            rows.append(section(f"genre:{genre}", genre, f"the most rated {genre} films",
                                 await conn.fetch(page_queries.SECTION_LIST, "genre", genre,
                                                  [], k), k))
    return {**version, "season": season, "rows": [r for r in rows if r is not None]}


@router.get("/", include_in_schema=False)
@router.get("/signup", include_in_schema=False)
@router.get("/find", include_in_schema=False)
async def page() -> FileResponse:
    """The single-page app; its script picks the view from the path."""
    return FileResponse(STATIC / "index.html")


@router.get("/users/{user_id}", include_in_schema=False)
async def user_page(user_id: UserId) -> FileResponse:
    return FileResponse(STATIC / "index.html")
