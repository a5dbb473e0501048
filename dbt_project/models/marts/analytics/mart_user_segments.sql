{#- Each user's activity segment and favourite genres. Favourite genres are
    those of the movies the user liked (4 stars or more) most often; a user
    who liked nothing falls back to all their ratings. -#}
with

users as (

    select * from {{ ref('dim_users') }}

),

genre_counts as (

    select * from {{ ref('int_ratings_aggregated_to_user_genres') }}

),

ranked as (

    select
        user_id,
        genre,
        row_number() over (
            partition by user_id
            order by liked_count desc, rated_count desc, genre asc
        ) as genre_rank

    from genre_counts

),

favourites as (

    select
        user_id,
        max(genre) filter (where genre_rank = 1) as favourite_genre,
        array_agg(genre order by genre_rank) filter (where genre_rank <= 3) as top_genres

    from ranked
    group by user_id

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
        array_to_string(favourites.top_genres, ', ') as top_genres,
        users.age_band,
        users.gender,
        users.occupation

    from users
    left join favourites
        on users.user_id = favourites.user_id
    where users.rating_count > 0

)

select * from final
