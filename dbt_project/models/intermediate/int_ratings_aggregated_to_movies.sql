{#- Rating statistics per movie, with a Bayesian average that pulls movies with
    few votes towards the global mean:
    (prior_votes * global_mean + sum of ratings) / (prior_votes + votes). -#}
with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

global as (

    select avg(rating) as global_mean from ratings

),

per_movie as (

    select
        movie_id,
        count(*) as rating_count,
        count(distinct user_id) as rater_count,
        avg(rating) as mean_rating,
        sum(rating) as rating_sum,
        min(rated_at) as first_rated_at,
        max(rated_at) as last_rated_at

    from ratings
    group by movie_id

),

final as (

    select
        per_movie.movie_id,
        per_movie.rating_count,
        per_movie.rater_count,
        round(per_movie.mean_rating, 4) as mean_rating,
        round(
            ({{ var('bayesian_prior_votes') }} * global.global_mean + per_movie.rating_sum)
            / ({{ var('bayesian_prior_votes') }} + per_movie.rating_count),
            4
        ) as bayesian_rating,
        per_movie.first_rated_at,
        per_movie.last_rated_at

    from per_movie
    cross join global

)

select * from final
