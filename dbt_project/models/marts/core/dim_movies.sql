{{ config(indexes=[{'columns': ['movie_sk'], 'unique': True}]) }}
with

movies as (

    select * from {{ ref('stg_movielens__movies') }}

),

links as (

    select * from {{ ref('stg_movielens__links') }}

),

stats as (

    select * from {{ ref('int_ratings_aggregated_to_movies') }}

),

final as (

    select
        {{ surrogate_key(['movies.dataset', 'movies.movie_id']) }} as movie_sk,
        movies.movie_id,
        movies.dataset,
        movies.title,
        movies.original_title,
        movies.release_year,
        movies.release_date,
        links.imdb_id,
        links.tmdb_id,
        coalesce(links.imdb_url, movies.imdb_url) as imdb_url,
        links.tmdb_url,
        movies.genres,
        array_to_string(movies.genres, ', ') as genre_list,
        cardinality(movies.genres) as genre_count,
        coalesce(stats.rating_count, 0) as rating_count,
        coalesce(stats.rater_count, 0) as rater_count,
        stats.mean_rating,
        stats.bayesian_rating,
        stats.first_rated_at,
        stats.last_rated_at

    from movies
    left join links
        on movies.movie_id = links.movie_id
    left join stats
        on movies.movie_id = stats.movie_id

)

select * from final
