{#- Every user of the current release: those in its user file, those who
    signed up through the API, and those known only from their ratings (the
    CSV releases publish no user file). -#}
{#- A unique index on the key: the relationships tests of fct_ratings' new rows
    probe it (without one, a night's 20,000 new ratings scanned the table once
    per rating: 131 s at 5M), and so do BI joins. -#}
{{ config(indexes=[{'columns': ['user_sk'], 'unique': True}]) }}
with

release_users as (

    select * from {{ ref('stg_movielens__users') }}

),

app_users as (

    select * from {{ ref('stg_app__users') }}

),

activity as (

    select * from {{ ref('int_ratings_aggregated_to_users') }}

),

regions as (

    select * from {{ ref('zip_prefix_regions') }}

),

profiles as (

    select
        user_id,
        gender,
        age_years,
        age_band_code,
        occupation,
        zip_code,
        false as is_app_user,
        cast(null as timestamptz) as signed_up_at

    from release_users

    union all

    select
        user_id,
        gender,
        age_years,
        cast(null as integer) as age_band_code,
        occupation,
        zip_code,
        true as is_app_user,
        created_at as signed_up_at

    from app_users

),

joined as (

    select
        coalesce(profiles.user_id, activity.user_id) as user_id,
        profiles.gender,
        profiles.age_years,
        profiles.age_band_code,
        profiles.occupation,
        profiles.zip_code,
        coalesce(profiles.is_app_user, false) as is_app_user,
        profiles.signed_up_at,
        -- an app sign-up may leave every field empty (CSV releases ask for none)
        coalesce(profiles.gender, profiles.occupation, profiles.zip_code) is not null
        or profiles.age_years is not null
        or profiles.age_band_code is not null as has_demographics,
        coalesce(activity.rating_count, 0) as rating_count,
        activity.mean_rating,
        coalesce(activity.active_days, 0) as active_days,
        activity.first_rated_at,
        activity.last_rated_at

    from profiles
    full outer join activity
        on profiles.user_id = activity.user_id

),

final as (

    select
        {{ surrogate_key(["'" ~ var('dataset') ~ "'", 'joined.user_id']) }} as user_sk,
        joined.user_id,
        '{{ var("dataset") }}' as dataset,
        joined.gender,
        joined.age_years,
        case
            when joined.age_band_code = 1 then 'Under 18'
            when joined.age_band_code = 18 then '18-24'
            when joined.age_band_code = 25 then '25-34'
            when joined.age_band_code = 35 then '35-44'
            when joined.age_band_code = 45 then '45-49'
            when joined.age_band_code = 50 then '50-55'
            when joined.age_band_code = 56 then '56+'
            when joined.age_years is null then 'Unknown'
            when joined.age_years < 18 then 'Under 18'
            when joined.age_years < 25 then '18-24'
            when joined.age_years < 35 then '25-34'
            when joined.age_years < 45 then '35-44'
            when joined.age_years < 50 then '45-49'
            when joined.age_years < 56 then '50-55'
            else '56+'
        end as age_band,
        coalesce(joined.occupation, 'unknown') as occupation,
        joined.zip_code,
        case
            when joined.zip_code ~ '^\d{5}' then coalesce(regions.census_region, 'Unknown')
            when joined.zip_code ~ '^[A-Z]\d[A-Z]' then 'Canada'
            else 'Unknown'
        end as zip_region,
        joined.is_app_user,
        joined.has_demographics,
        joined.signed_up_at,
        joined.rating_count,
        joined.mean_rating,
        joined.active_days,
        joined.first_rated_at,
        joined.last_rated_at,
        cast(joined.last_rated_at as date) - cast(joined.first_rated_at as date) as tenure_days

    from joined
    left join regions
        on left(joined.zip_code, 1) = regions.zip_prefix

)

select * from final
