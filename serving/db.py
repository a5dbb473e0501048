"""Warehouse access for the API: one asyncpg pool, as the read-only role.

Configuration: ``settings.api`` (:mod:`moviesforyou.foundation.config`), from the environment:

| variable | default | meaning |
|---|---|---|
| ``MFY_API_DATABASE_URL`` | the embedded warehouse's reader URL | libpq URL of the read-only role |
| ``MFY_API_POOL_MIN`` / ``MFY_API_POOL_MAX`` | 2 / 10 | pool size per worker process |
| ``MFY_DATASET`` | ``ml-100k`` | the release served until one is published (then the live one's) |

Every statement is parameterised (asyncpg sends values separately from the
SQL and caches the prepared statements per connection); identifiers are never
built from client input.
"""

from __future__ import annotations

import dataclasses
import os

from moviesforyou.foundation.config import Settings


def database_url(settings: Settings) -> str:
    """The URL the API reads with: ``MFY_API_DATABASE_URL``, else the warehouse's reader."""
    if settings.api.database_url:
        return settings.api.database_url
    from moviesforyou.foundation import warehouse

    return warehouse.reader_url(settings)


def api_environment(settings: Settings, **api_changes) -> dict[str, str]:
    """The environment of an API process on ``settings``' warehouse: this process's,
    with every setting written out and the reader's URL (``api_changes`` change other
    API settings, e.g. ``cache_size=0``). Its workers build their settings from it."""
    api = dataclasses.replace(settings.api, database_url=database_url(settings), **api_changes)
    return {**os.environ, **dataclasses.replace(settings, api=api).to_env()}


async def _keep_session(conn) -> None:
    """The pool's reset on release: nothing to undo. asyncpg rolls back a transaction
    left open itself; the API changes no session setting (only ``set local``, which ends
    with its transaction), takes no advisory lock, keeps no cursor past its transaction
    and listens to nothing.
    asyncpg's default reset runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release, a second round trip per lookup that cost Postgres
    about as much as the lookup itself (``benchmarks/api_load.py``)."""


async def create_pool(settings: Settings):
    import asyncpg

    return await asyncpg.create_pool(
        database_url(settings), min_size=settings.api.pool_min, max_size=settings.api.pool_max,
        command_timeout=30, reset=_keep_session, server_settings={
            "application_name": "moviesforyou-api",
            # looser than pg_trgm's defaults (0.6 and 0.3), so that typos still match:
            # "gmae the" finds "The Game"; the ranking puts the closest first
            "pg_trgm.word_similarity_threshold": "0.3",
            "pg_trgm.similarity_threshold": "0.2",
            # recs.recommend leaves short lists to the API (serving/live.py), which
            # scores the rest in NumPy instead of SQL
            "mfy.recommend_top_up": "off",
        })


# --------------------------------------------------------------------------- queries

MOVIE_COLUMNS = ("m.movie_id, m.title, m.release_year, m.genres, m.mean_rating, "
                 "m.bayesian_rating, m.rating_count, m.imdb_url")

MOVIES_PAGE = f"""
select {MOVIE_COLUMNS}, count(*) over () as total
from recs.movie_catalogue as m
where $3::text is null or $3 = any(m.genres)
order by m.movie_id
limit $1 offset $2
"""

MOVIE = f"select {MOVIE_COLUMNS} from recs.movie_catalogue as m where m.movie_id = $1"
#: The film an id of the release was merged into (a duplicate entry; GIN-indexed).
MERGED_MOVIE = f"""
select {MOVIE_COLUMNS} from recs.movie_catalogue as m
where m.merged_movie_ids @> array[$1::integer]
"""

#: Candidates by trigram similarity (index-assisted); app.py re-ranks them by edit
#: distance, which trigrams miss for transposed letters ("gmae").
SEARCH = f"""
select {MOVIE_COLUMNS}, m.original_title,
       word_similarity($1, m.search_text) + similarity(m.search_text, $1) as match
from recs.movie_catalogue as m
where (m.search_text % $1 or $1 <% m.search_text) and {{filters}}
order by match desc, m.rating_count desc, m.movie_id
limit $2
""".format(filters="""($3::text[] is null or m.genres @> $3)
    and ($4::integer is null or m.release_year >= $4)
    and ($5::integer is null or m.release_year <= $5)""")

#: The catalogue without a title: genres (all of them), a year range, by rating or year.
BROWSE = f"""
select {MOVIE_COLUMNS}, count(*) over () as total
from recs.movie_catalogue as m
where ($1::text[] is null or m.genres @> $1)
    and ($2::integer is null or m.release_year >= $2)
    and ($3::integer is null or m.release_year <= $3)
order by case when $4 = 'year' then m.release_year end desc nulls last,
         m.bayesian_rating desc nulls last, m.rating_count desc, m.movie_id
limit $5 offset $6
"""

BROWSE_IDS = """
select m.movie_id from recs.movie_catalogue as m
where ($1::text[] is null or m.genres @> $1)
    and ($2::integer is null or m.release_year >= $2)
    and ($3::integer is null or m.release_year <= $3)
"""

MOVIES_BY_ID = (f"select {MOVIE_COLUMNS} from recs.movie_catalogue as m "
                "where m.movie_id = any($1::int[])")

SIMILAR = f"""
select s.rank, {MOVIE_COLUMNS}, s.similarity, s.model_version, s.publish_id
from recs.similar_movies as s
join recs.movie_catalogue as m on m.movie_id = s.similar_movie_id
where s.movie_id = $1
order by s.rank
limit $2
"""

#: In a transaction: recs.recommend tops short lists up itself (the pool's sessions
#: leave that to the API, which falls back on this when it has no model to score with).
SQL_TOP_UP = "set local mfy.recommend_top_up = 'on'"

USER_EXISTS = """
select exists (select 1 from marts.dim_users where user_id = $1)
    or exists (select 1 from app.users where user_id = $1 and dataset = $2)
"""

USER_RATINGS = """
with rated as (
    select f.movie_id, f.rating::float8 as rating, f.rated_at, false as pending
    from marts.fct_ratings as f
    where f.user_id = $1 and f.dataset = $2
    union all
    select a.movie_id, a.rating::float8, a.rated_at, true
    from app.ratings as a
    where a.user_id = $1 and a.dataset = $2
        and a.received_at > coalesce((select max(ingested_at) from marts.fct_ratings
                                      where rating_source = 'app' and dataset = $2),
                                     '-infinity')
)
select r.movie_id, m.title, m.release_year, m.genres, r.rating, r.rated_at, r.pending,
       count(*) over () as total
from rated as r
left join recs.movie_catalogue as m on m.movie_id = r.movie_id
order by r.rated_at desc, r.movie_id
limit $3 offset $4
"""

#: Whether user $1 rated films through the API since the live publish (the marts'
#: newest app rating then): such a viewer is folded in live (serving/live.py).
#: The live publish's ``app_ratings_through`` (``pub``: recs.publication; older
#: publishes, rolled back, lack the column).
_RATINGS_THROUGH = ("coalesce((to_jsonb(pub) ->> 'app_ratings_through')::timestamptz, "
                    "'-infinity')")

_PENDING = f"""exists (
    select 1 from app.ratings as a
    where a.user_id = $1 and a.dataset = (select dataset from recs.publication)
        and a.received_at > (  -- once (an InitPlan), not for each of the viewer's ratings
            select {_RATINGS_THROUGH} from recs.publication as pub))"""

#: The hot path: Postgres writes the JSON answer, the API passes it through untouched.
#: A known user's short list comes back short (the pool's mfy.recommend_top_up is
#: off): the API tops it up from the movie factors it keeps (serving/live.py).
RECOMMEND_JSON = f"""
select count(*) as n, bool_and(source = 'als') as personal, min(publish_id) as publish_id,
       min(model_version) as model_version, array_agg(movie_id order by rank) as movie_ids,
       json_build_object(
           'user_id', $1::integer,
           'model_version', min(model_version),
           'publish_id', min(publish_id),
           'exclude_genres', $3::text[],
           'recommendations', coalesce(json_agg(json_build_object(
               'rank', rank, 'movie_id', movie_id, 'title', title, 'year', release_year,
               'genres', genres, 'score', score,
               'predicted_rating', round(predicted_rating::numeric, 2),
               'source', source) order by rank), '[]'::json))::text as body,
       -- rated through the API since the publish: their list is folded in live
       ({_PENDING}) as pending,
       -- the model has factors for them: a short list is theirs to top up (asked only
       -- when the list is short, so the usual lookup skips the probe; else null)
       case when count(*) < $2 then exists (
           select 1 from recs.user_factors as u
           where u.user_id = $1 and u.implicit_factors is not null) end as known,
       -- the viewer's arm (app.arm_of): champion unless an experiment runs
       (select app.arm_of(to_jsonb(p) ->> 'experiment',
                          (to_jsonb(p) ->> 'challenger_share')::float8, $1)
        from recs.publication as p) as arm
from recs.recommend($1, $2, $3::text[])
"""

#: The fast path's lookup (serving/lookups.py), for a batch of viewers ($1) at once:
#: each stored list's first $2 rows as they are, for viewers with no rating since the
#: publish and no excluded genre, where recs.recommend's filters drop nothing (the
#: list was scored without everything the viewer had rated through the publish's
#: ``app_ratings_through``). Index range scans and catalogue probes; no set-returning
#: function, no aggregate and no JSON in Postgres, which cost more than the lookup
#: (``benchmarks/api_load.py``): the API writes the answer. ``pending`` sends the
#: viewer to :func:`recommend`, which folds them in.
STORED_ROWS_MANY = f"""
-- materialized: the publication's app_ratings_through worked out once, and each
-- viewer's pending check once, not for every row of their ratings and their list
with publication as materialized (
    select pub.dataset, {_RATINGS_THROUGH} as ratings_through
    from recs.publication as pub
),
asked as materialized (
    select viewer.user_id,
           exists (select 1 from app.ratings as a
                   where a.user_id = viewer.user_id and a.dataset = publication.dataset
                       and a.received_at > publication.ratings_through) as pending
    from unnest($1::integer[]) as viewer (user_id)
    cross join publication
)
select r.user_id, r.rank, r.movie_id, m.title, m.release_year, m.genres, r.score,
       round(r.predicted_rating::numeric, 2)::float8 as predicted_rating, r.source, r.arm,
       r.model_version, r.publish_id, asked.pending
from asked
join recs.user_recommendations as r on r.user_id = asked.user_id
join recs.movie_catalogue as m on m.movie_id = r.movie_id
where r.rank <= $2
order by r.user_id, r.rank
"""

#: What a fold-in needs from the live publish: the champion's model settings (older
#: publishes, rolled back, lack them: then nobody is folded in) and the experiment.
FOLD_IN_SETTINGS = """
select p.publish_id, p.model_version, p.global_mean, p.rating_min, p.rating_max,
       (to_jsonb(p) ->> 'explicit_reg_param')::float8 as explicit_reg,
       (to_jsonb(p) ->> 'implicit_reg_param')::float8 as implicit_reg,
       (to_jsonb(p) ->> 'implicit_alpha')::float8 as alpha,
       (to_jsonb(p) ->> 'bias_reg_user')::float8 as bias_reg_user,
       coalesce(to_jsonb(p) ->> 'list_family', 'als') as list_family,
       to_jsonb(p) ->> 'experiment' as experiment,
       coalesce((to_jsonb(p) ->> 'challenger_share')::float8, 0) as challenger_share
from recs.publication as p
"""

#: The same settings of an experiment's challenger arm.
ARM_SETTINGS = """
select model_version, global_mean, rating_min, rating_max, explicit_reg_param as explicit_reg,
       implicit_reg_param as implicit_reg, implicit_alpha as alpha, bias_reg_user, list_family
from recs.arms where arm = $1
"""

#: Every movie's factors (of arm $1) and genres, for the fold-in model (once per publish).
FOLD_IN_MOVIES = """
select f.movie_id, f.bias, f.explicit_factors, f.implicit_factors,
       (to_jsonb(f) ->> 'fold_weight')::float8 as fold_weight,
       coalesce(m.genres, '{}') as genres
from recs.movie_factors as f
left join recs.movie_catalogue as m on m.movie_id = f.movie_id
where coalesce(to_jsonb(f) ->> 'arm', 'champion') = $1
order by f.movie_id
"""

#: A viewer's ratings as the model should see them now: the marts', then the API's
#: newer ones (a re-rating replaces the earlier rating).
VIEWER_HISTORY = """
select distinct on (movie_id) movie_id, rating::float8 as rating
from (
    select f.movie_id, f.rating, f.rated_at from marts.fct_ratings as f
    where f.user_id = $1 and f.dataset = $2
    union all
    select a.movie_id, a.rating, a.rated_at from app.ratings as a
    where a.user_id = $1 and a.dataset = $2
) as rated
order by movie_id, rated_at desc
"""

USER_FACTORS = """
select bias, explicit_factors, implicit_factors from recs.user_factors where user_id = $1
"""

PENDING = f"select {_PENDING}"

CATALOGUE_ROWS = """
select movie_id, title, release_year, genres from recs.movie_catalogue
where movie_id = any($1::int[])
"""

PREDICT = "select recs.predict_rating($1, $2)"

#: The release being served: the live publish's.
LIVE_DATASET = """
select case when to_regclass('recs.publication') is not null
            then (select dataset from recs.publication) end
"""

#: Today's season, as the season lists name it (the warehouse's one definition).
SEASON = "select app.season_of(current_date)"

PUBLICATION = """
select publish_id, dataset, model_name, model_version, mlflow_run_id, generated_at,
       recommendations_per_user, ratings_through, source_loaded_at
from recs.publication
"""

HEALTH = """
select (select went_live_at from ops.publish_log where publish_id = $1) as published_at,
       (select max(loaded_at) from ops.source_loads
        where dataset = $2 and status in ('loaded', 'unchanged')) as last_source_check_at,
       (select max(received_at) from app.ratings where dataset = $2) as last_app_rating_at
"""

GENRES = "select genre from marts.dim_genres order by genre"

SIGN_UP = "select app.sign_up_with_token($1, $2, $3, $4, $5, $6::text[], $7)"

# writes for the token's own user only (serving/auth.py)
SUBMIT_RATING = "select app.submit_rating_as($1, $2, $3, $4::numeric)"

TOKEN_USER = "select app.token_user($1)"

HAS_TOKEN = "select app.has_token($1)"

REVOKE_TOKEN = "select app.revoke_token($1)"

#: (the id asked for, the film's id): an id merged into a film answers with the film's.
KNOWN_MOVIES = """
select asked.movie_id as asked, m.movie_id
from unnest($1::int[]) as asked (movie_id)
join recs.movie_catalogue as m
    on m.movie_id = asked.movie_id or m.merged_movie_ids @> array[asked.movie_id]
"""
