{#- A movie needs top_movies_min_votes ratings to rank, or fewer on a small release:
    the count of its 100th most rated movie (every rated movie when fewer are rated),
    at least 1. A big release ranks exactly as with the fixed minimum. -#}
with

movies as (

    select * from {{ ref('dim_movies') }}

),

threshold as (

    select
        least(
            {{ var('top_movies_min_votes') }},
            greatest(1, coalesce(
                (
                    select hundredth.rating_count
                    from movies as hundredth
                    where hundredth.rating_count > 0
                    order by hundredth.rating_count desc
                    limit 1 offset 99
                ),
                1
            ))
        ) as min_votes

),

eligible as (

    select movies.*
    from movies
    cross join threshold
    where movies.rating_count >= threshold.min_votes

),

final as (

    select
        cast(row_number() over (
            order by bayesian_rating desc, rating_count desc, movie_id asc
        ) as integer) as rank,
        movie_sk,
        movie_id,
        title,
        release_year,
        genre_list,
        rating_count,
        mean_rating,
        bayesian_rating

    from eligible

)

select * from final
