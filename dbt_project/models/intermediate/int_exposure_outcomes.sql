{#- What each viewer did after being shown a list. One row per exposure: a viewer's
    lists of one day from one publish, arm and source (asking ten times a day is one
    exposure), with the ratings they gave in the exposure_window_days after the
    first of those lists, and which of them were of a film shown. -#}
{{ config(materialized='table', tags=['after_publish']) }}

with

shown as (

    select * from {{ ref('stg_app__exposures') }}

),

kept_ids as (

    select
        movie_id,
        canonical_movie_id
    from {{ ref('int_movie_merges') }}
    where dataset = '{{ var("dataset") }}'

),

ratings as (

    select
        app_ratings.user_id,
        coalesce(kept_ids.canonical_movie_id, app_ratings.movie_id) as movie_id,
        app_ratings.rating,
        app_ratings.rated_at
    from {{ ref('stg_app__ratings') }} as app_ratings
    left join kept_ids on app_ratings.movie_id = kept_ids.movie_id

),

exposures as (

    select
        user_id,
        cast(shown_at as date) as shown_on,
        publish_id,
        arm,
        source,
        min(model_version) as model_version,
        min(shown_at) as first_shown_at,
        count(distinct movie_id) as films_shown
    from shown
    group by 1, 2, 3, 4, 5

),

films as (

    select
        user_id,
        cast(shown_at as date) as shown_on,
        publish_id,
        arm,
        source,
        movie_id,
        min(shown_rank) as best_rank
    from shown
    group by 1, 2, 3, 4, 5, 6

),

rated_after as (

    select
        exposures.user_id,
        exposures.shown_on,
        exposures.publish_id,
        exposures.arm,
        exposures.source,
        ratings.rating,
        films.best_rank
    from exposures
    inner join ratings
        on
            exposures.user_id = ratings.user_id
            and exposures.first_shown_at < ratings.rated_at
            and exposures.first_shown_at
            + interval '{{ var("exposure_window_days") }} days'
            >= ratings.rated_at
    left join films
        on
            exposures.user_id = films.user_id
            and exposures.shown_on = films.shown_on
            and exposures.publish_id = films.publish_id
            and exposures.arm = films.arm
            and exposures.source = films.source
            and ratings.movie_id = films.movie_id

),

outcomes as (

    select
        user_id,
        shown_on,
        publish_id,
        arm,
        source,
        count(*) as new_ratings,
        count(best_rank) as new_ratings_of_shown,
        sum(best_rank) as shown_rank_sum,
        count(*) filter (where rating >= 4) as liked_ratings,
        count(best_rank) filter (where rating >= 4) as liked_ratings_of_shown,
        sum(best_rank) filter (where rating >= 4) as liked_shown_rank_sum,
        coalesce(bool_or(best_rank <= 10), false) as hit_10,
        coalesce(bool_or(best_rank <= 50), false) as hit_50,
        coalesce(bool_or(best_rank <= 10 and rating >= 4), false) as liked_hit_10,
        coalesce(bool_or(best_rank <= 50 and rating >= 4), false) as liked_hit_50
    from rated_after
    group by 1, 2, 3, 4, 5

),

final as (

    select
        {{ surrogate_key(['exposures.user_id', 'exposures.shown_on', 'exposures.publish_id',
                          'exposures.arm', 'exposures.source']) }} as exposure_sk,
        exposures.user_id,
        exposures.shown_on,
        exposures.publish_id,
        exposures.model_version,
        exposures.arm,
        exposures.source,
        exposures.first_shown_at,
        cast(exposures.films_shown as integer) as films_shown,
        coalesce(outcomes.hit_10, false) as hit_10,
        coalesce(outcomes.hit_50, false) as hit_50,
        coalesce(outcomes.liked_hit_10, false) as liked_hit_10,
        coalesce(outcomes.liked_hit_50, false) as liked_hit_50,
        cast(coalesce(outcomes.new_ratings, 0) as integer) as new_ratings,
        cast(coalesce(outcomes.new_ratings_of_shown, 0) as integer) as new_ratings_of_shown,
        cast(coalesce(outcomes.shown_rank_sum, 0) as bigint) as shown_rank_sum,
        cast(coalesce(outcomes.liked_ratings, 0) as integer) as liked_ratings,
        cast(coalesce(outcomes.liked_ratings_of_shown, 0) as integer)
            as liked_ratings_of_shown,
        cast(coalesce(outcomes.liked_shown_rank_sum, 0) as bigint) as liked_shown_rank_sum,
        exposures.first_shown_at
        + interval '{{ var("exposure_window_days") }} days' <= now() as window_closed
    from exposures
    left join outcomes
        on
            exposures.user_id = outcomes.user_id
            and exposures.shown_on = outcomes.shown_on
            and exposures.publish_id = outcomes.publish_id
            and exposures.arm = outcomes.arm
            and exposures.source = outcomes.source

)

select * from final
