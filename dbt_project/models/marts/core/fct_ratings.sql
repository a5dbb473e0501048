{#-
    One row per rating event. Incremental: a nightly run only reads

    * the release's ratings when ingest loaded a new version of the release
      (a newer load_id in ops.source_loads than the one in this table), and
    * app ratings received since the newest one here, minus a lookback for
      submissions that committed late.

    Re-read app ratings already in the table are skipped, so every row is
    inserted once, and `built_at` (the start of the dbt invocation that
    inserted it) tells the incremental aggregates downstream which rows they
    have not counted yet. The post-hook removes ratings of superseded loads of the
    release and of any other release, through the (dataset, rating_source,
    load_id) index. After a full build it gathers the new table's statistics,
    so that the aggregates downstream plan their delta scans with real row
    counts (without any, Postgres guessed a third of the table and scanned it
    all); an incremental run skips that (26 s at 25M), since Postgres reads an
    indexed column's true maximum beyond the histogram itself.

    The (user_id, movie_id) index answers "has this user rated this movie" in one
    probe: the recs suite checks it for every recommendation, and with only a
    movie_id index Postgres walked each popular movie's ratings instead (11 minutes
    for 325,000 recommendations at 1M ratings, under a second with it).
-#}
{{
    config(
        materialized='incremental',
        unique_key='rating_sk',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        indexes=[
            {'columns': ['rating_sk'], 'unique': True},
            {'columns': ['dataset', 'rating_source', 'load_id']},
            {'columns': ['rating_source', 'ingested_at']},
            {'columns': ['user_id', 'movie_id']},
            {'columns': ['movie_id']},
            {'columns': ['built_at']},
            {'columns': ['rated_at']},
        ],
        post_hook=[
            "delete from {{ this }}
             where dataset < '{{ var('dataset') }}' or dataset > '{{ var('dataset') }}'",
            "delete from {{ this }}
             where dataset = '{{ var('dataset') }}'
               and rating_source = 'movielens'
               and load_id < (
                   select coalesce(max(load_id), 0) from {{ source('ops', 'source_loads') }}
                   where dataset = '{{ var('dataset') }}' and status = 'loaded'
               )",
            "{% if not is_incremental() %}analyze {{ this }}{% endif %}",
        ],
    )
}}

with

-- not materialized: read by both incremental branches below, and a materialized
-- CTE would compute the whole release once before either could skip it
unioned as not materialized (

    select * from {{ ref('int_ratings_unioned') }}

),

ratings as (

    select * from unioned

    {% if is_incremental() %}
        -- The release only when ingest loaded a newer version of it. That
        -- condition has no column of the row in it, so Postgres checks it once
        -- and skips scanning the release entirely when it is false.
        where
            unioned.rating_source = 'movielens'  -- noqa: RF03
            and (
                select coalesce(max(loads.load_id), 0)
                from {{ source('ops', 'source_loads') }} as loads
                where loads.dataset = '{{ var("dataset") }}' and loads.status = 'loaded'
            ) > (
                select coalesce(max(built.load_id), 0)
                from {{ this }} as built
                where
                    built.dataset = '{{ var("dataset") }}'
                    and built.rating_source = 'movielens'
            )

        -- Two branches, not one OR: each branch's conditions reach the union
        -- inside int_ratings_unioned, so the release branch is skipped when it
        -- has nothing new and the app branch reads app ratings only. As one OR
        -- with the correlated NOT EXISTS below, Postgres could push neither down
        -- and computed every row of the release to filter it (9.3 s at 5M with
        -- nothing new; 0.6 s now, most of it JIT).
        union all

        select * from unioned
        where
            unioned.rating_source = 'app'  -- noqa: RF03
            and unioned.ingested_at > (
                select
                    coalesce(max(built.ingested_at), cast('-infinity' as timestamptz))
                    - interval '{{ var("incremental_lookback") }}'
                from {{ this }} as built
                where
                    built.dataset = '{{ var("dataset") }}'
                    and built.rating_source = 'app'
            )
            and not exists (
                select 1 from {{ this }} as built
                where built.rating_sk = unioned.rating_sk
            )
    {% endif %}

),

final as (

    select
        rating_sk,
        {{ surrogate_key(['dataset', 'user_id']) }} as user_sk,
        {{ surrogate_key(['dataset', 'movie_id']) }} as movie_sk,
        cast(to_char(rated_at at time zone 'UTC', 'YYYYMMDD') as integer) as date_sk,
        dataset,
        rating_source,
        user_id,
        movie_id,
        rating,
        rating >= 4 as is_liked,
        rated_at,
        ingested_at,
        load_id,
        {{ batch_time() }} as built_at

    from ratings

)

select * from final
