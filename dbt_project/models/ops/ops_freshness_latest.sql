{{ config(alias='freshness_latest') }}

with

checks as (

    select * from {{ source('ops', 'freshness_checks') }}

),

final as (

    select
        check_id,
        checked_at,
        dataset,
        publish_id,
        published_hours_ago,
        ratings_through,
        source_checked_hours_ago,
        pending_app_ratings,
        max_age_hours,
        is_fresh
    from checks
    order by checked_at desc
    limit 1

)

select * from final
