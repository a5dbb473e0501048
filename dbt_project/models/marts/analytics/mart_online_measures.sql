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
        {{ share_with_interval('hit_viewers_10', 'exposed_viewers', 'hit_rate_10') }},
        cast(hit_viewers_50 as integer) as hit_viewers_50,
        {{ share_with_interval('hit_viewers_50', 'exposed_viewers', 'hit_rate_50') }},
        cast(liked_hit_viewers_10 as integer) as liked_hit_viewers_10,
        {{ share_with_interval('liked_hit_viewers_10', 'exposed_viewers',
                               'liked_hit_rate_10') }},
        cast(liked_hit_viewers_50 as integer) as liked_hit_viewers_50,
        {{ share_with_interval('liked_hit_viewers_50', 'exposed_viewers',
                               'liked_hit_rate_50') }},
        cast(new_ratings as integer) as new_ratings,
        cast(new_ratings_of_shown as integer) as new_ratings_of_shown,
        {{ share_with_interval('new_ratings_of_shown', 'new_ratings', 'shown_share') }},
        cast(shown_rank_sum as double precision)
        / nullif(new_ratings_of_shown, 0) as shown_mean_rank,
        cast(liked_ratings as integer) as liked_ratings,
        cast(liked_ratings_of_shown as integer) as liked_ratings_of_shown,
        {{ share_with_interval('liked_ratings_of_shown', 'liked_ratings',
                               'liked_shown_share') }},
        cast(liked_shown_rank_sum as double precision)
        / nullif(liked_ratings_of_shown, 0) as liked_shown_mean_rank,
        window_closed
    from counted

)

select * from final
