with

genres as (

    select * from {{ ref('stg_movielens__genres') }}

),

movie_genres as (

    select * from {{ ref('int_movie_genres_unnested') }}

),

counts as (

    select
        genre,
        count(*) as movie_count

    from movie_genres
    group by genre

),

final as (

    select
        {{ surrogate_key(['genres.dataset', 'genres.genre']) }} as genre_sk,
        genres.genre,
        genres.genre_id,
        genres.dataset,
        coalesce(counts.movie_count, 0) as movie_count

    from genres
    left join counts
        on genres.genre = counts.genre

)

select * from final
