{#- Running totals per movie. Incremental and additive: a nightly build adds
    the ratings it has not counted yet to the movies they touched, reading only
    those ratings (the totals of a popular movie do not re-read its history).
    A new rating counts as a new rater unless its user already rated the movie
    in a counted row. -#}
{{
    config(
        materialized='incremental',
        unique_key='movie_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['movie_id'], 'unique': True}],
    )
}}

with

new_ratings as (

    {{ new_ratings() }}

),

{% if is_incremental() %}
    flagged as (

        select
            new_ratings.*,
            not exists (
                select 1 from {{ ref('fct_ratings') }} as counted
                where
                    counted.user_id = new_ratings.user_id
                    and counted.movie_id = new_ratings.movie_id
                    and counted.built_at <= {{ ratings_watermark() }}
            ) as is_new_rater

        from new_ratings

    ),
{% else %}
    flagged as (

        select
            new_ratings.*,
            true as is_new_rater
        from new_ratings

    ),
{% endif %}

delta as (

    select
        movie_id,
        count(*) as rating_count,
        sum(rating) as rating_sum,
        count(distinct user_id) filter (where is_new_rater) as rater_count,
        min(rated_at) as first_rated_at,
        max(rated_at) as last_rated_at

    from flagged
    group by movie_id

),

final as (

    {{ add_to_totals('delta', ['movie_id'], ['rating_count', 'rating_sum', 'rater_count'], [
        ('first_rated_at', 'least(held.first_rated_at, delta.first_rated_at)'),
        ('last_rated_at', 'greatest(held.last_rated_at, delta.last_rated_at)'),
    ]) }}

)

select * from final
