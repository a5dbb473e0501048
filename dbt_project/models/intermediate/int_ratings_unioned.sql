{#- Every rating from every source for the current release, with a stable key
    and the time it reached the warehouse (for incremental loading). -#}
with

movielens as (

    select * from {{ ref('stg_movielens__ratings') }}

),

app as (

    select * from {{ ref('stg_app__ratings') }}

),

unioned as (

    select
        dataset,
        'movielens' as rating_source,
        user_id || ':' || movie_id as source_rating_id,
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
