{#- One row per film: an entry merged into another (int_movie_merges) is left out,
    and the kept entry lists the ids it absorbed. -#}
{{ config(indexes=[{'columns': ['movie_sk'], 'unique': True}]) }}
with

entries as (

    select * from {{ ref('stg_movielens__movies') }}

),

duplicate_entries as (

    select * from {{ ref('int_movie_merges') }}

),

absorbed as (

    select
        canonical_movie_id as movie_id,
        array_agg(movie_id order by movie_id) as merged_movie_ids

    from duplicate_entries
    where movie_id <> canonical_movie_id
    group by canonical_movie_id

),

movies as (

    select entries.*
    from entries
    where not exists (
        select 1 from duplicate_entries
        where
            duplicate_entries.movie_id = entries.movie_id
            and duplicate_entries.movie_id <> duplicate_entries.canonical_movie_id
    )

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
        coalesce(absorbed.merged_movie_ids, cast('{}' as integer[])) as merged_movie_ids,
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
    left join absorbed
        on movies.movie_id = absorbed.movie_id

)

select * from final
