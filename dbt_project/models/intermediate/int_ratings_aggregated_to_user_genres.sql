{#- Per user and genre: ratings and likes (4 stars or more) of the genre's
    movies. Incremental like int_ratings_aggregated_to_users: the touched users
    are recomputed from their whole history. -#}
{{
    config(
        materialized='incremental',
        unique_key=['user_id', 'genre'],
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['user_id', 'genre'], 'unique': True}],
    )
}}

with

bridge as (

    select * from {{ ref('bridge_movie_genres') }}

),

history as (

    {{ history_of_touched('user_id') }}

),

final as (

    select
        history.user_id,
        bridge.genre,
        count(*) filter (where history.is_liked) as liked_count,
        count(*) as rated_count,
        {{ batch_time() }} as through_built_at

    from history
    inner join bridge
        on history.movie_sk = bridge.movie_sk
    group by history.user_id, bridge.genre

)

select * from final
