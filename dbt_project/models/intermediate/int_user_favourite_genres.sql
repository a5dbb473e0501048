{#- Each user's favourite genres: those of the movies they liked (4 stars or
    more) most often, then rated most, then alphabetically. Incremental: a
    nightly build ranks again only the users whose genre counts it rewrote. -#}
{{
    config(
        materialized='incremental',
        unique_key='user_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['user_id'], 'unique': True}],
    )
}}

with

genre_counts as (

    select * from {{ ref('int_ratings_aggregated_to_user_genres') }}
    {%- if is_incremental() %}
        where through_built_at > {{ ratings_watermark() }}
    {%- endif %}

),

ranked as (

    select
        user_id,
        genre,
        row_number() over (
            partition by user_id
            order by liked_count desc, rated_count desc, genre asc
        ) as genre_rank

    from genre_counts

),

final as (

    select
        user_id,
        max(genre) filter (where genre_rank = 1) as favourite_genre,
        array_to_string(
            array_agg(genre order by genre_rank) filter (where genre_rank <= 3), ', '
        ) as top_genres,
        {{ batch_time() }} as through_built_at

    from ranked
    group by user_id

)

select * from final
