{#- Rating statistics per movie, with a Bayesian average that pulls movies with
    few votes towards the global mean:
    (prior_votes * global_mean + sum of ratings) / (prior_votes + votes).
    Computed from the running totals (int_movie_rating_totals), so every movie's
    Bayesian average follows the global mean each night without re-reading
    ratings. -#}
with

totals as (

    select * from {{ ref('int_movie_rating_totals') }}

),

global as (

    select sum(rating_sum) / sum(rating_count) as global_mean from totals

),

final as (

    select
        totals.movie_id,
        totals.rating_count,
        totals.rater_count,
        round(totals.rating_sum / totals.rating_count, 4) as mean_rating,
        round(
            ({{ var('bayesian_prior_votes') }} * global.global_mean + totals.rating_sum)
            / ({{ var('bayesian_prior_votes') }} + totals.rating_count),
            4
        ) as bayesian_rating,
        totals.first_rated_at,
        totals.last_rated_at

    from totals
    cross join global

)

select * from final
