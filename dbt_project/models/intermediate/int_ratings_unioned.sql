{#- Every rating from every source for the current release, with a stable key
    and the time it reached the warehouse (for incremental loading).

    Ratings carry the film's kept id (int_movie_merges): a rating of a duplicate
    entry counts for its film, and a viewer who rated one film under two of its
    ids keeps one rating, the later one (the key keeps the id it was given under). -#}
with

-- not materialized: read by both branches below; materialized, Postgres would copy the
-- whole release into a work table on a full build (about 30 s at 25M ratings)
released as not materialized (

    select * from {{ ref('stg_movielens__ratings') }}

),

duplicate_entries as (

    select * from {{ ref('int_movie_merges') }}

),

app_submitted as (

    select * from {{ ref('stg_app__ratings') }}

),

-- a film listed once: its ratings as they are (an anti-join with the few merged entries)
listed_once as (

    select
        released.*,
        released.movie_id as released_movie_id

    from released
    where not exists (
        select 1 from duplicate_entries
        where duplicate_entries.movie_id = released.movie_id
    )

),

-- a film listed more than once: the later of a viewer's ratings, under the kept id
merged as (

    select distinct on (released.user_id, duplicate_entries.canonical_movie_id)
        released.dataset,
        released.user_id,
        duplicate_entries.canonical_movie_id as movie_id,
        released.rating,
        released.rated_at,
        released.load_id,
        released.loaded_at,
        released.movie_id as released_movie_id

    from released
    inner join duplicate_entries
        on released.movie_id = duplicate_entries.movie_id
    order by
        released.user_id asc,
        duplicate_entries.canonical_movie_id asc,
        released.rated_at desc,
        released.movie_id desc

),

movielens as (

    select * from listed_once
    union all
    select * from merged

),

app as (

    select
        app_submitted.dataset,
        app_submitted.app_rating_id,
        app_submitted.user_id,
        coalesce(duplicate_entries.canonical_movie_id, app_submitted.movie_id) as movie_id,
        app_submitted.rating,
        app_submitted.rated_at,
        app_submitted.received_at

    from app_submitted
    left join duplicate_entries
        on app_submitted.movie_id = duplicate_entries.movie_id

),

unioned as (

    select
        dataset,
        'movielens' as rating_source,
        user_id || ':' || released_movie_id as source_rating_id,
        user_id,
        movie_id,
        rating,
        rated_at,
        loaded_at as ingested_at,
        load_id

    from movielens

    union all

    select
        dataset,
        'app' as rating_source,
        cast(app_rating_id as text) as source_rating_id,
        user_id,
        movie_id,
        rating,
        rated_at,
        received_at as ingested_at,
        cast(null as bigint) as load_id

    from app

),

final as (

    select
        {{ surrogate_key(['dataset', 'rating_source', 'source_rating_id']) }} as rating_sk,
        *

    from unioned

)

select * from final
