{#- Each user's activity segment and favourite genres (ranked per user in
    int_user_favourite_genres, which a nightly build updates for the touched
    users only). -#}
with

users as (

    select * from {{ ref('dim_users') }}

),

favourites as (

    select * from {{ ref('int_user_favourite_genres') }}

),

final as (

    select
        users.user_sk,
        users.user_id,
        case
            when users.rating_count < {{ var('segment_light_max') }} then 'light'
            when users.rating_count < {{ var('segment_heavy_min') }} then 'regular'
            else 'heavy'
        end as activity_segment,
        users.rating_count,
        users.active_days,
        round(1.0 * users.rating_count / nullif(users.active_days, 0), 2) as ratings_per_active_day,
        users.mean_rating,
        favourites.favourite_genre,
        favourites.top_genres,
        users.age_band,
        users.gender,
        users.occupation

    from users
    left join favourites
        on users.user_id = favourites.user_id
    where users.rating_count > 0

)

select * from final
