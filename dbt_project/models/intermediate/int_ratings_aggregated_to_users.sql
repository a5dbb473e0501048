with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

final as (

    select
        user_id,
        count(*) as rating_count,
        round(avg(rating), 4) as mean_rating,
        count(distinct cast(rated_at as date)) as active_days,
        min(rated_at) as first_rated_at,
        max(rated_at) as last_rated_at

    from ratings
    group by user_id

)

select * from final
