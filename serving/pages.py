"""Page assembly: the recommendations page's sections, each with why it is there, and
the lists that must be made now (a fold-in after new ratings, a short list topped up).
"""

from __future__ import annotations

import json

from fastapi import Request

from serving import auth, db, live, page_queries
from serving.deps import live_dataset, movie_json, pool, require_user, version_of

TRENDING = "rated most in the last 30 days, the newest ratings counting most"


async def made_now(request: Request, conn, user_id: int, k: int, excluded: list[str],
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
                                      await live_dataset(conn, request), k, excluded)
        if folded:
            return folded
    if not (row["known"] and row["n"] < k):
        return None
    topped = await live.top_up(state.live, conn, user_id, await live_dataset(conn, request), k,
                               excluded, json.loads(row["body"]))
    if topped:
        return topped
    async with conn.transaction():
        await conn.execute(db.SQL_TOP_UP)
        row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, k, excluded)
    return row["publish_id"], row["body"].encode()


def section(key: str, title: str, reason: str, rows, k: int) -> dict | None:
    """One section of the recommendations page (None when it has no film), each film
    once, at most ``k``."""
    movies, seen = [], set()
    for row in rows:
        movie = row if isinstance(row, dict) else movie_json(row)
        if movie["movie_id"] not in seen and len(movies) < k:
            seen.add(movie["movie_id"])
            movies.append(movie)
    return {"key": key, "title": title, "reason": reason, "movies": movies} if movies else None


async def sections_and_list(request: Request, user_id: int, k: int,
                             n: int) -> tuple[dict, dict]:
    """The sections (``k`` films each) and the ranked list they start from (``n`` films,
    as ``/recommendations`` answers it), from one lookup and at most one fold-in."""
    async with pool(request).acquire() as conn:
        dataset = await live_dataset(conn, request)
        await require_user(conn, user_id, dataset)
        if await conn.fetchval(db.HAS_TOKEN, user_id):
            await auth.require_owner(conn, request, user_id)
        row = await conn.fetchrow(db.RECOMMEND_JSON, user_id, max(k, n), [])
        if not row["n"] and not row["known"]:
            await version_of(conn, [])  # 503 when nothing is published yet
        made = await made_now(request, conn, user_id, max(k, n), [], row)
        top = json.loads(made[1] if made else row["body"])
        request.app.state.exposures.record_answer(  # the page shows the list's first k
            user_id, {**top, "recommendations": top["recommendations"][:k]},
            "live" if made else "stored" if row["personal"] else "cold", row["arm"])
        rated = await conn.fetch(page_queries.SECTION_RATED, user_id, dataset)
        seen = [r["movie_id"] for r in rated]
        profile = await conn.fetchrow(page_queries.SECTION_PROFILE, user_id)
        genre = (await conn.fetchval(page_queries.SECTION_GENRE, user_id, dataset)
                 or next(iter(profile["preferred_genres"]), None))
        anchor = next((r for r in rated if r["has_neighbours"]), None)
        season = await conn.fetchval(db.SEASON)
        sections = [section(
            "for_you", "Top picks for you",
            "what the model expects you to like most, from your ratings"
            if row["personal"] or row["known"]
            or top.get("folded_in_ratings") else "the most rated films for people who "
            "chose what you chose at sign-up, until your ratings reach the model",
            top["recommendations"], k)]
        if anchor is not None:
            sections.append(section(
                "because", f"Because you rated {anchor['title']}",
                f"films people who liked {anchor['title']} also liked, and of its genres",
                await conn.fetch(page_queries.SECTION_SIMILAR, anchor["movie_id"], seen, k), k))
        if genre is not None:
            sections.append(section(
                "genre", f"Your favourite genre: {genre}",
                "the genre of most of your good ratings" if rated
                else "a genre you chose at sign-up",
                await conn.fetch(page_queries.SECTION_IN_GENRE, user_id, genre, seen, k), k))
        sections.append(section(
            "season", f"Popular this {season.lower()}",
            f"the films rated most in {season.lower()} months",
            await conn.fetch(page_queries.SECTION_LIST, "season", season, seen, k), k))
        sections.append(section(
            "trending", "Trending", TRENDING,
            await conn.fetch(page_queries.SECTION_LIST, "trending", "all", seen, k), k))
        for list_type, segment in (("age_gender", profile["age_gender"]),
                                   ("occupation", profile["occupation"])):
            if segment is not None:
                like = section(
                    "like_you", "Popular with people like you",
                    f"the films rated most by people of your {list_type.replace('_', ' and ')}"
                    f" ({segment})",
                    await conn.fetch(page_queries.SECTION_LIST, list_type, segment, seen, k), k)
                if like is not None:
                    sections.append(like)
                    break
        if profile["region"] is not None:
            where = profile["region"] if profile["region"] == "Canada" else \
                f"the {profile['region']}"
            sections.append(section(
                "region", f"Popular in {where}",
                f"the films rated most by people in your region ({profile['region']}, "
                "from your ZIP code)",
                await conn.fetch(page_queries.SECTION_LIST, "region", profile["region"],
                                 seen, k), k))
    return ({"user_id": user_id, "model_version": top["model_version"],
             "publish_id": top["publish_id"], "season": season,
             "sections": [s for s in sections if s is not None]},
            {**top, "recommendations": top["recommendations"][:n]})
