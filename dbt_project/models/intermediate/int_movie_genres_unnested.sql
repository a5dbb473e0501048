with

movies as (

    select * from {{ ref('stg_movielens__movies') }}

),

merges as (

    select * from {{ ref('int_movie_merges') }}

),

final as (

    select
        movies.dataset,
        movies.movie_id,
        genre.genre,
        cardinality(movies.genres) as movie_genre_count

    from movies
    cross join lateral unnest(movies.genres) as genre (genre)
    -- one film, one entry: entries merged into another film are left out
    where not exists (
        select 1 from merges
        where
            merges.movie_id = movies.movie_id
            and merges.movie_id <> merges.canonical_movie_id
    )

)

select * from final
