{#- Monthly cohorts by the month of a user's first rating, and how many of
    them rate again in each following month. -#}
with

users as (

    select * from {{ ref('dim_users') }}

),

user_months as (

    select * from {{ ref('int_ratings_aggregated_to_user_months') }}

),

cohorts as (

    select
        user_id,
        cast(date_trunc('month', first_rated_at at time zone 'UTC') as date) as cohort_month

    from users
    where first_rated_at is not null

),

cohort_sizes as (

    select
        cohort_month,
        count(*) as cohort_size

    from cohorts
    group by cohort_month

),

activity as (

    select
        cohorts.cohort_month,
        (extract(year from user_months.activity_month) - extract(year from cohorts.cohort_month)) * 12
        + extract(month from user_months.activity_month) - extract(month from cohorts.cohort_month)
            as months_since_first,
        -- a user has one row per month (a unique index), so no distinct (a sort)
        count(*) as active_users,
        sum(user_months.rating_count) as rating_count

    from user_months
    inner join cohorts
        on user_months.user_id = cohorts.user_id
    group by cohorts.cohort_month, months_since_first

),

final as (

    select
        activity.cohort_month,
        cast(activity.months_since_first as integer) as months_since_first,
        cohort_sizes.cohort_size,
        activity.active_users,
        round(1.0 * activity.active_users / cohort_sizes.cohort_size, 4) as retention_rate,
        activity.rating_count

    from activity
    inner join cohort_sizes
        on activity.cohort_month = cohort_sizes.cohort_month

)

select * from final
