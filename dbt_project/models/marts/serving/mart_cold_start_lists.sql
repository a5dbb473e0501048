{#- The cold-start lists newcomers get before the model knows them: the most
    rated movies overall, per genre, per season of the rating date and, where
    the release has a user file, per age band and gender, per occupation and
    per region (the census region of the ZIP code);
    and what is trending: the last 30 days of ratings (up to the newest one, so
    an old release has a trending list too), each weighing exp(-days old / 7).
    publish.py copies this table into recs.popular_movies. -#}
with

movie_totals as (

    select * from {{ ref('int_movie_rating_totals') }}

),

season_totals as (

    select * from {{ ref('int_movie_season_totals') }}

),

movie_genres as (

    select * from {{ ref('bridge_movie_genres') }}

),

users as (

    select * from {{ ref('dim_users') }}

),

-- not materialized: read three times below, and a materialized CTE would copy all
-- of fct_ratings (about 30 s at 25M) where each reader needs an index scan
ratings as not materialized (

    select * from {{ ref('fct_ratings') }}

),

newest_rating as (

    select max(rated_at) as rated_at from ratings

),

recent_ratings as (

    -- a range scan of the rated_at index, not a pass over every rating
    select
        ratings.movie_id,
        ratings.rating,
        exp(
            -extract(epoch from (newest_rating.rated_at - ratings.rated_at)) / (7 * 86400.0)
        ) as weight
    from ratings
    cross join newest_rating
    where ratings.rated_at > newest_rating.rated_at - interval '30 days'

),

demographic_ratings as (

    -- driven from the users who have demographics (none in the CSV releases),
    -- so it reads only their ratings, through the index on user_id
    select
        users.age_band,
        users.gender,
        users.occupation,
        users.zip_region,
        ratings.movie_id,
        ratings.rating

    from users
    inner join ratings
        on users.user_id = ratings.user_id
    where users.has_demographics

),

counted as (

    select
        'overall' as list_type,
        'all' as segment,
        movie_id,
        rating_count as n,
        rating_sum / rating_count as mean
    from movie_totals

    union all

    select
        'genre' as list_type,
        movie_genres.genre as segment,
        movie_totals.movie_id,
        movie_totals.rating_count as n,
        movie_totals.rating_sum / movie_totals.rating_count as mean
    from movie_totals
    inner join movie_genres on movie_totals.movie_id = movie_genres.movie_id

    union all

    select
        'age_gender' as list_type,
        age_band || ' ' || gender as segment,
        movie_id,
        count(*) as n,
        avg(rating) as mean
    from demographic_ratings
    where gender is not null
    group by age_band, gender, movie_id

    union all

    select
        'occupation' as list_type,
        occupation as segment,
        movie_id,
        count(*) as n,
        avg(rating) as mean
    from demographic_ratings
    where occupation <> 'unknown'
    group by occupation, movie_id

    union all

    select
        'region' as list_type,
        zip_region as segment,
        movie_id,
        count(*) as n,
        avg(rating) as mean
    from demographic_ratings
    where zip_region <> 'Unknown'
    group by zip_region, movie_id

    union all

    select
        'season' as list_type,
        season as segment,
        movie_id,
        rating_count as n,
        rating_sum / rating_count as mean
    from season_totals

    union all

    select
        'trending' as list_type,
        'all' as segment,
        movie_id,
        sum(weight) as n,
        avg(rating) as mean
    from recent_ratings
    group by movie_id

),

ranked as (

    select
        *,
        row_number() over (
            partition by list_type, segment order by n desc, mean desc, movie_id asc
        ) as rank
    from counted

),

final as (

    select
        list_type,
        segment,
        cast(rank as integer) as rank,
        movie_id,
        cast(n as double precision) as score,
        -- trending: the decayed count, rounded
        cast(round(n) as integer) as rating_count,
        cast(mean as double precision) as mean_rating,
        list_type || '|' || segment || '|' || rank as list_position

    from ranked
    where rank <= {{ var('popular_n') }}

)

select * from final
