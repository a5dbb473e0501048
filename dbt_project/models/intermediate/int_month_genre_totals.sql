{#- Ratings per calendar month (UTC) and genre. Incremental: a nightly build
    recomputes the months its new ratings fall in (usually just this one) from
    all ratings of those months, through the index on rated_at. -#}
{{
    config(
        materialized='incremental',
        unique_key=['rating_month', 'genre'],
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['rating_month', 'genre'], 'unique': True}],
    )
}}

with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

bridge as (

    select * from {{ ref('bridge_movie_genres') }}

),

history as (

    select ratings.* from ratings
    {%- if is_incremental() %}
        where
            false
        {%- for month in touched_months() %}
                or (
                    ratings.rated_at >= cast('{{ month }}' as timestamp) at time zone 'UTC'
                    and ratings.rated_at
                    < (cast('{{ month }}' as timestamp) + interval '1 month') at time zone 'UTC'
                )
            {%- endfor %}
    {%- endif %}

),

final as (

    select
        cast(date_trunc('month', history.rated_at at time zone 'UTC') as date) as rating_month,
        bridge.genre,
        count(*) as rating_count,
        sum(bridge.genre_weight) as weighted_rating_count,
        sum(history.rating) as rating_sum,
        count(distinct history.user_id) as rater_count,
        {{ batch_time() }} as through_built_at

    from history
    inner join bridge
        on history.movie_sk = bridge.movie_sk
    group by rating_month, bridge.genre

)

select * from final
