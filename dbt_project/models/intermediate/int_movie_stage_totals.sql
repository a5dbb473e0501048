{#- Ratings per movie from users in their first `new_user_days` days ("new")
    and afterwards ("long-time"). Incremental and additive like
    int_movie_rating_totals; a new rating older than its user's first counted
    one would move earlier ratings between stages, so transform.py rebuilds in
    full when one arrives. -#}
{{
    config(
        materialized='incremental',
        unique_key=['movie_id', 'user_stage'],
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['movie_id', 'user_stage'], 'unique': True}],
    )
}}

with

new_ratings as (

    {{ new_ratings() }}

),

users as (

    select * from {{ ref('int_ratings_aggregated_to_users') }}

),

delta as (

    select
        new_ratings.movie_id,
        case
            when
                new_ratings.rated_at
                < users.first_rated_at + interval '{{ var("new_user_days") }} days'
                then 'new'
            else 'long-time'
        end as user_stage,
        count(*) as rating_count,
        count(*) filter (where new_ratings.is_liked) as liked_count

    from new_ratings
    inner join users
        on new_ratings.user_id = users.user_id
    group by new_ratings.movie_id, user_stage

),

final as (

    {{ add_to_totals('delta', ['movie_id', 'user_stage'], ['rating_count', 'liked_count']) }}

)

select * from final
