with

movies as (

    select * from {{ ref('stg_movielens__movies') }}

),

duplicate_entries as (

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
        select 1 from duplicate_entries
        where
            duplicate_entries.movie_id = movies.movie_id
            and duplicate_entries.movie_id <> duplicate_entries.canonical_movie_id
    )

)

select * from final
