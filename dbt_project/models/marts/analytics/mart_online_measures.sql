{#- Did the lists work? Per day, publish, model version, arm and source: how many
    viewers were shown a list, how many then rated a film it showed (hit rate at 10
    and 50), what share of their new ratings were of shown films and at what mean
    rank, and the same for liked ratings (4 stars or more), each share with its
    95% Wilson interval. -#}
{{ config(tags=['after_publish']) }}

with

outcomes as (

    select * from {{ ref('int_exposure_outcomes') }}

),

counted as (

    select
        shown_on,
        publish_id,
        model_version,
        arm,
        source,
        count(*) as exposed_viewers,
        count(*) filter (where hit_10) as hit_viewers_10,
        count(*) filter (where hit_50) as hit_viewers_50,
        count(*) filter (where liked_hit_10) as liked_hit_viewers_10,
        count(*) filter (where liked_hit_50) as liked_hit_viewers_50,
        sum(new_ratings) as new_ratings,
        sum(new_ratings_of_shown) as new_ratings_of_shown,
        sum(shown_rank_sum) as shown_rank_sum,
        sum(liked_ratings) as liked_ratings,
        sum(liked_ratings_of_shown) as liked_ratings_of_shown,
        sum(liked_shown_rank_sum) as liked_shown_rank_sum,
        bool_and(window_closed) as window_closed
    from outcomes
    group by 1, 2, 3, 4, 5

),

final as (

    select
        shown_on,
        publish_id,
        model_version,
        arm,
        source,
        cast(exposed_viewers as integer) as exposed_viewers,
        cast(hit_viewers_10 as integer) as hit_viewers_10,
        cast(hit_viewers_10 as double precision) / exposed_viewers as hit_rate_10,
        {{ wilson_bound('hit_viewers_10', 'exposed_viewers', 'low') }} as hit_rate_10_low,
        {{ wilson_bound('hit_viewers_10', 'exposed_viewers', 'high') }} as hit_rate_10_high,
        cast(hit_viewers_50 as integer) as hit_viewers_50,
        cast(hit_viewers_50 as double precision) / exposed_viewers as hit_rate_50,
        {{ wilson_bound('hit_viewers_50', 'exposed_viewers', 'low') }} as hit_rate_50_low,
        {{ wilson_bound('hit_viewers_50', 'exposed_viewers', 'high') }} as hit_rate_50_high,
        cast(liked_hit_viewers_10 as integer) as liked_hit_viewers_10,
        cast(liked_hit_viewers_10 as double precision) / exposed_viewers
            as liked_hit_rate_10,
        {{ wilson_bound('liked_hit_viewers_10', 'exposed_viewers', 'low') }}
            as liked_hit_rate_10_low,
        {{ wilson_bound('liked_hit_viewers_10', 'exposed_viewers', 'high') }}
            as liked_hit_rate_10_high,
        cast(liked_hit_viewers_50 as integer) as liked_hit_viewers_50,
        cast(liked_hit_viewers_50 as double precision) / exposed_viewers
            as liked_hit_rate_50,
        {{ wilson_bound('liked_hit_viewers_50', 'exposed_viewers', 'low') }}
            as liked_hit_rate_50_low,
        {{ wilson_bound('liked_hit_viewers_50', 'exposed_viewers', 'high') }}
            as liked_hit_rate_50_high,
        cast(new_ratings as integer) as new_ratings,
        cast(new_ratings_of_shown as integer) as new_ratings_of_shown,
        cast(new_ratings_of_shown as double precision)
        / nullif(new_ratings, 0) as shown_share,
        {{ wilson_bound('new_ratings_of_shown', 'new_ratings', 'low') }} as shown_share_low,
        {{ wilson_bound('new_ratings_of_shown', 'new_ratings', 'high') }} as shown_share_high,
        cast(shown_rank_sum as double precision)
        / nullif(new_ratings_of_shown, 0) as shown_mean_rank,
        cast(liked_ratings as integer) as liked_ratings,
        cast(liked_ratings_of_shown as integer) as liked_ratings_of_shown,
        cast(liked_ratings_of_shown as double precision)
        / nullif(liked_ratings, 0) as liked_shown_share,
        {{ wilson_bound('liked_ratings_of_shown', 'liked_ratings', 'low') }}
            as liked_shown_share_low,
        {{ wilson_bound('liked_ratings_of_shown', 'liked_ratings', 'high') }}
            as liked_shown_share_high,
        cast(liked_shown_rank_sum as double precision)
        / nullif(liked_ratings_of_shown, 0) as liked_shown_mean_rank,
        window_closed
    from counted

)

select * from final
