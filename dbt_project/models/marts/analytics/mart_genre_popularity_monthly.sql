with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

bridge as (

    select * from {{ ref('bridge_movie_genres') }}

),

monthly as (

    select
        cast(date_trunc('month', ratings.rated_at at time zone 'UTC') as date) as rating_month,
        bridge.genre,
        count(*) as rating_count,
        sum(bridge.genre_weight) as weighted_rating_count,
        avg(ratings.rating) as mean_rating,
        count(distinct ratings.user_id) as rater_count

    from ratings
    inner join bridge
        on ratings.movie_sk = bridge.movie_sk
    group by rating_month, bridge.genre

),

final as (

    select
        rating_month,
        genre,
        rating_count,
        round(weighted_rating_count, 2) as weighted_rating_count,
        round(mean_rating, 4) as mean_rating,
        rater_count,
        round(
            weighted_rating_count / sum(weighted_rating_count) over (partition by rating_month), 4
        ) as share_of_month

    from monthly

)

select * from final
