{#- Ratings per user and calendar month (UTC). Incremental like
    int_ratings_aggregated_to_users: the touched users are recomputed from
    their whole history. -#}
{{
    config(
        materialized='incremental',
        unique_key=['user_id', 'activity_month'],
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['user_id', 'activity_month'], 'unique': True}],
    )
}}

with

history as (

    {{ history_of_touched('user_id') }}

),

final as (

    select
        user_id,
        cast(date_trunc('month', rated_at at time zone 'UTC') as date) as activity_month,
        count(*) as rating_count,
        {{ batch_time() }} as through_built_at

    from history
    group by user_id, activity_month

)

select * from final
