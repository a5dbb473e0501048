{#- Compares what users do in their first `new_user_days` days with what they
    do afterwards: volume, generosity, and how mainstream their choices are.
    Built from per-user and per-movie totals split by stage, which a nightly
    build updates incrementally. -#}
with

users as (

    select * from {{ ref('int_ratings_aggregated_to_users') }}

),

movies as (

    select * from {{ ref('dim_movies') }}

),

stage_totals as (

    select * from {{ ref('int_movie_stage_totals') }}

),

popular as (

    select movie_id from movies
    order by rating_count desc, movie_id asc
    limit 100

),

user_stages as (

    select
        'new' as user_stage,
        new_stage_rating_count as rating_count,
        new_stage_rating_sum as rating_sum,
        new_stage_liked_count as liked_count

    from users
    where new_stage_rating_count > 0

    union all

    select
        'long-time' as user_stage,
        rating_count - new_stage_rating_count as rating_count,
        rating_sum - new_stage_rating_sum as rating_sum,
        liked_count - new_stage_liked_count as liked_count

    from users
    where rating_count > new_stage_rating_count

),

by_users as (

    select
        user_stage,
        count(*) as user_count,
        sum(rating_count) as rating_count,
        sum(rating_sum) as rating_sum,
        sum(liked_count) as liked_count

    from user_stages
    group by user_stage

),

by_movies as (

    select
        stage_totals.user_stage,
        sum(stage_totals.rating_count * movies.rating_count) as popularity_sum,
        coalesce(sum(stage_totals.rating_count) filter (where popular.movie_id is not null), 0)
            as top_100_count

    from stage_totals
    inner join movies
        on stage_totals.movie_id = movies.movie_id
    left join popular
        on stage_totals.movie_id = popular.movie_id
    group by stage_totals.user_stage

),

final as (

    select
        by_users.user_stage,
        by_users.user_count,
        by_users.rating_count,
        round(1.0 * by_users.rating_count / by_users.user_count, 2) as ratings_per_user,
        round(by_users.rating_sum / by_users.rating_count, 4) as mean_rating,
        round(1.0 * by_users.liked_count / by_users.rating_count, 4) as liked_share,
        round(1.0 * by_movies.popularity_sum / by_users.rating_count, 1) as mean_movie_popularity,
        round(1.0 * by_movies.top_100_count / by_users.rating_count, 4) as top_100_share

    from by_users
    inner join by_movies
        on by_users.user_stage = by_movies.user_stage

)

select * from final
