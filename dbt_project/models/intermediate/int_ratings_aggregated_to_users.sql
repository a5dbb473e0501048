{#- Rating activity per user, split into the user's first `new_user_days` days
    ("new") and afterwards ("long-time"). Incremental: a nightly build
    recomputes only the users with ratings it has not counted yet, from their
    whole history (one index scan per user), so a late rating that moves a
    user's first rating is still counted right. -#}
{{
    config(
        materialized='incremental',
        unique_key='user_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['user_id'], 'unique': True}],
    )
}}

with

history as (

    {{ history_of_touched('user_id') }}

),

staged as (

    select
        history.*,
        history.rated_at < min(history.rated_at) over (partition by history.user_id)
        + interval '{{ var("new_user_days") }} days' as is_new_stage

    from history

),

final as (

    select
        user_id,
        count(*) as rating_count,
        sum(rating) as rating_sum,
        round(avg(rating), 4) as mean_rating,
        count(*) filter (where is_liked) as liked_count,
        count(distinct cast(rated_at as date)) as active_days,
        min(rated_at) as first_rated_at,
        max(rated_at) as last_rated_at,
        count(*) filter (where is_new_stage) as new_stage_rating_count,
        coalesce(sum(rating) filter (where is_new_stage), 0) as new_stage_rating_sum,
        count(*) filter (where is_new_stage and is_liked) as new_stage_liked_count,
        {{ batch_time() }} as through_built_at

    from staged
    group by user_id

)

select * from final
