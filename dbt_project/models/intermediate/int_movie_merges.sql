{#- Catalogue entries that are one film, and the id they are merged into.

    Two entries of a release are the same film when the release gives both the
    same IMDb id (links.csv's imdbId; the 100K u.item's IMDb link). An entry
    without one is matched on its title, year and genres together. Films that only
    share a title (Cape Fear 1962 and 1991) differ in year or link and stay apart.
    Each film keeps its lowest id, which stays the same across re-releases.

    One row per entry of a film listed more than once, the kept entry included;
    every entry listed once is absent. -#}
{{ config(materialized='table', indexes=[{'columns': ['movie_id'], 'unique': True}]) }}

with

movies as (

    select * from {{ ref('stg_movielens__movies') }}

),

links as (

    select * from {{ ref('stg_movielens__links') }}

),

keyed as (

    select
        movies.dataset,
        movies.movie_id,
        case
            when links.imdb_id is not null then 'imdb id'
            when movies.imdb_url is not null then 'imdb link'
            else 'title, year and genres'
        end as merge_rule,
        coalesce(
            'imdb:' || links.imdb_id,
            'url:' || movies.imdb_url,
            'title:' || lower(movies.original_title) || '|'
            || coalesce(cast(movies.release_year as text), '') || '|'
            || array_to_string(movies.genres, ',')
        ) as film_key

    from movies
    left join links
        on movies.movie_id = links.movie_id

),

grouped as (

    select
        dataset,
        movie_id,
        merge_rule,
        min(movie_id) over (partition by film_key) as canonical_movie_id,
        count(*) over (partition by film_key) as entries

    from keyed

),

final as (

    select
        dataset,
        movie_id,
        canonical_movie_id,
        merge_rule,
        entries

    from grouped
    where entries > 1

)

select * from final
