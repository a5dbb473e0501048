{#- Compares what users do in their first `new_user_days` days with what they
    do afterwards: volume, generosity, and how mainstream their choices are. -#}
with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

users as (

    select * from {{ ref('dim_users') }}

),

movies as (

    select * from {{ ref('dim_movies') }}

),

popular as (

    select movie_sk from movies
    order by rating_count desc, movie_id asc
    limit 100

),

classified as (

    select
        case
            when ratings.rated_at < users.first_rated_at + interval '{{ var("new_user_days") }} days'
                then 'new'
            else 'long-time'
        end as user_stage,
        ratings.user_id,
        ratings.rating,
        ratings.is_liked,
        movies.rating_count as movie_rating_count,
        popular.movie_sk is not null as is_top_100_movie

    from ratings
    inner join users
        on ratings.user_sk = users.user_sk
    inner join movies
        on ratings.movie_sk = movies.movie_sk
    left join popular
        on ratings.movie_sk = popular.movie_sk

),

final as (

    select
        user_stage,
        count(distinct user_id) as user_count,
        count(*) as rating_count,
        round(1.0 * count(*) / count(distinct user_id), 2) as ratings_per_user,
        round(avg(rating), 4) as mean_rating,
        round(avg(case when is_liked then 1.0 else 0.0 end), 4) as liked_share,
        round(avg(movie_rating_count), 1) as mean_movie_popularity,
        round(avg(case when is_top_100_movie then 1.0 else 0.0 end), 4) as top_100_share

    from classified
    group by user_stage

)

select * from final
