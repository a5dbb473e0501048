{#- Built from per-user totals (int_ratings_aggregated_to_users), so a
    nightly build reads no ratings. -#}
with

totals as (

    select * from {{ ref('int_ratings_aggregated_to_users') }}

),

users as (

    select * from {{ ref('dim_users') }}

),

joined as (

    select
        users.age_band,
        coalesce(users.gender, 'Unknown') as gender,
        users.occupation,
        totals.rating_count,
        totals.rating_sum,
        totals.liked_count

    from totals
    inner join users
        on totals.user_id = users.user_id

),

grouped as (

    select
        case
            when grouping(age_band) = 0 and grouping(gender) = 0 then 'age_band × gender'
            when grouping(age_band) = 0 then 'age_band'
            when grouping(gender) = 0 then 'gender'
            else 'occupation'
        end as demographic,
        case
            when grouping(age_band) = 0 and grouping(gender) = 0 then age_band || ' × ' || gender
            when grouping(age_band) = 0 then age_band
            when grouping(gender) = 0 then gender
            else occupation
        end as demographic_value,
        count(*) as user_count,
        sum(rating_count) as rating_count,
        sum(rating_sum) / sum(rating_count) as mean_rating,
        1.0 * sum(liked_count) / sum(rating_count) as liked_share

    from joined
    group by grouping sets ((age_band), (gender), (occupation), (age_band, gender))

),

final as (

    select
        demographic,
        demographic_value,
        user_count,
        rating_count,
        round(1.0 * rating_count / user_count, 2) as ratings_per_user,
        round(mean_rating, 4) as mean_rating,
        round(liked_share, 4) as liked_share

    from grouped

)

select * from final
