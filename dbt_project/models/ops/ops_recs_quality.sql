{#- Coverage and popularity bias of the live recommendations, one row per
    publish, added by the recs_freshness DAG after each publish (tag
    after_publish: the nightly build leaves it out, since the recs it reads are
    published after that build). -#}
{{ config(
    alias='recs_quality',
    materialized='incremental',
    unique_key='publish_id',
    tags=['after_publish'],
) }}

with

publication as (

    select * from {{ source('recs', 'publication') }}

),

recommendations as (

    select * from {{ source('recs', 'user_recommendations') }}

),

catalogue as (

    select * from {{ source('recs', 'movie_catalogue') }}

),

popularity as (

    select
        movie_id,
        percent_rank() over (order by rating_count) as percentile  -- noqa: RF04
    from catalogue

),

recommended as (

    select
        recommendations.user_id,
        recommendations.movie_id,
        popularity.percentile
    from recommendations
    inner join popularity on recommendations.movie_id = popularity.movie_id

),

figures as (

    select
        count(distinct user_id) as users,  -- noqa: RF04
        count(*) as recommendations,
        count(distinct movie_id) as recommended_movies,
        avg(percentile) as mean_popularity_percentile,
        avg(cast(percentile >= 0.9 as integer)) as share_of_top_10pct
    from recommended

),

rated_catalogue as (

    select count(*) as movies
    from catalogue
    where rating_count > 0

),

final as (

    select
        publication.publish_id,
        publication.model_version,
        now() as measured_at,
        cast(figures.users as integer) as users,  -- noqa: RF04
        figures.recommendations,
        cast(rated_catalogue.movies as integer) as catalogue_movies,
        cast(figures.recommended_movies as integer) as recommended_movies,
        cast(figures.recommended_movies as double precision)
        / nullif(rated_catalogue.movies, 0) as catalogue_coverage,
        cast(figures.mean_popularity_percentile as double precision)
            as mean_popularity_percentile,
        cast(figures.share_of_top_10pct as double precision) as share_of_top_10pct

    from publication
    cross join figures
    cross join rated_catalogue

)

select * from final
