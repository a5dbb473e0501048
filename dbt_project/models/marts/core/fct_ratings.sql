{#-
    One row per rating event. Incremental: a nightly run only reads

    * the release's ratings when ingest loaded a new version of the release
      (a newer load_id in ops.source_loads than the one in this table), and
    * app ratings received since the newest one here, minus a lookback for
      submissions that committed late.

    delete+insert on rating_sk makes re-reads harmless, so re-running never
    duplicates rows. The post-hook removes ratings of superseded loads of the
    release and of any other release, through the (dataset, rating_source,
    load_id) index.
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
            {'columns': ['user_id']},
            {'columns': ['movie_id']},
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
        ],
    )
}}

with

ratings as (

    select * from {{ ref('int_ratings_unioned') }}

    {% if is_incremental() %}
    where
        (
            -- the release only when ingest loaded a newer version of it; this
            -- condition has no column in it, so Postgres checks it once and
            -- skips scanning the release entirely when it is false
            rating_source = 'movielens'
            and (
                select coalesce(max(load_id), 0) from {{ source('ops', 'source_loads') }}
                where dataset = '{{ var("dataset") }}' and status = 'loaded'
            ) > (
                select coalesce(max(load_id), 0) from {{ this }}
                where dataset = '{{ var("dataset") }}' and rating_source = 'movielens'
            )
        )
        or (
            rating_source = 'app'
            and ingested_at > (
                select coalesce(max(ingested_at), '-infinity'::timestamptz)
                    - interval '{{ var("incremental_lookback") }}'
                from {{ this }}
                where dataset = '{{ var("dataset") }}' and rating_source = 'app'
            )
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
        load_id

    from ratings

)

select * from final
