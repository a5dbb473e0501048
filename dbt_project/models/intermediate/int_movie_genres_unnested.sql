with

movies as (

    select * from {{ ref('stg_movielens__movies') }}

),

final as (

    select
        movies.dataset,
        movies.movie_id,
        genre.genre,
        cardinality(movies.genres) as movie_genre_count

    from movies
    cross join lateral unnest(movies.genres) as genre (genre)

)

select * from final
