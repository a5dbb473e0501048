with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

users as (

    select * from {{ ref('dim_users') }}

),

joined as (

    select
        users.age_band,
        coalesce(users.gender, 'Unknown') as gender,
        users.occupation,
        ratings.user_id,
        ratings.rating,
        ratings.is_liked

    from ratings
    inner join users
        on ratings.user_sk = users.user_sk

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
        count(distinct user_id) as user_count,
        count(*) as rating_count,
        avg(rating) as mean_rating,
        avg(case when is_liked then 1.0 else 0.0 end) as liked_share

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
