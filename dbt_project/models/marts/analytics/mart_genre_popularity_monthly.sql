{#- Built from the monthly totals (int_month_genre_totals), which a nightly
    build updates only for the months that got new ratings. -#}
with

totals as (

    select * from {{ ref('int_month_genre_totals') }}

),

final as (

    select
        rating_month,
        genre,
        rating_count,
        round(weighted_rating_count, 2) as weighted_rating_count,
        round(rating_sum / rating_count, 4) as mean_rating,
        rater_count,
        round(
            weighted_rating_count / sum(weighted_rating_count) over (partition by rating_month), 4
        ) as share_of_month

    from totals

)

select * from final
