with

movie_genres as (

    select * from {{ ref('int_movie_genres_unnested') }}

),

final as (

    select
        {{ surrogate_key(['dataset', 'movie_id']) }} as movie_sk,
        {{ surrogate_key(['dataset', 'genre']) }} as genre_sk,
        movie_id,
        genre,
        round(1.0 / movie_genre_count, 4) as genre_weight

    from movie_genres

)

select * from final
