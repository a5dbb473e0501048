{#- The exposure log of the current release: every list served, one row per film
    shown, with its rank (its place in the list). -#}
{{ config(tags=['after_publish']) }}

with

source as (

    select * from {{ source('app', 'exposures') }}

),

publishes as (

    select * from {{ source('ops', 'publish_log') }}
    where dataset = '{{ var("dataset") }}'

),

shown as (

    select
        source.shown_at,
        source.user_id,
        source.publish_id,
        source.model_version,
        source.arm,
        source.source,
        source.channel,
        films.movie_id,
        cast(films.position as integer) as shown_rank

    from source
    inner join publishes on source.publish_id = publishes.publish_id
    cross join lateral unnest(source.movie_ids) with ordinality as films (movie_id, position)

)

select * from shown
