{#- Ratings per movie and season of the rating date (the season cold-start
    lists). Incremental and additive like int_movie_rating_totals. -#}
{{
    config(
        materialized='incremental',
        unique_key=['movie_id', 'season'],
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['movie_id', 'season'], 'unique': True}],
    )
}}

with

new_ratings as (

    {{ new_ratings() }}

),

delta as (

    select
        movie_id,
        {{ season_of("rated_at at time zone 'UTC'") }} as season,
        count(*) as rating_count,
        sum(rating) as rating_sum

    from new_ratings
    group by movie_id, season

),

final as (

    {{ add_to_totals('delta', ['movie_id', 'season'], ['rating_count', 'rating_sum']) }}

)

select * from final
