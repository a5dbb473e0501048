with

movies as (

    select * from {{ ref('dim_movies') }}

),

eligible as (

    select * from movies
    where rating_count >= {{ var('top_movies_min_votes') }}

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
