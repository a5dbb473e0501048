{#- The cold-start lists newcomers get before the model knows them: the most
    rated movies overall, per genre, per season of the rating date and, where
    the release has a user file, per age band and gender and per occupation.
    publish.py copies this table into recs.popular_movies. -#}
with

ratings as (

    select * from {{ ref('fct_ratings') }}

),

dates as (

    select * from {{ ref('dim_dates') }}

),

movie_genres as (

    select * from {{ ref('bridge_movie_genres') }}

),

users as (

    select * from {{ ref('dim_users') }}

),

rated as (

    select
        ratings.user_id,
        ratings.movie_id,
        ratings.rating,
        dates.season

    from ratings
    left join dates on ratings.date_sk = dates.date_sk
    where ratings.dataset = '{{ var("dataset") }}'

),

counted as (

    select
        'overall' as list_type,
        'all' as segment,
        movie_id,
        count(*) as n,
        avg(rating) as mean
    from rated
    group by movie_id

    union all

    select
        'genre' as list_type,
        movie_genres.genre as segment,
        rated.movie_id,
        count(*) as n,
        avg(rated.rating) as mean
    from rated
    inner join movie_genres on rated.movie_id = movie_genres.movie_id
    group by movie_genres.genre, rated.movie_id

    union all

    select
        'age_gender' as list_type,
        users.age_band || ' ' || users.gender as segment,
        rated.movie_id,
        count(*) as n,
        avg(rated.rating) as mean
    from rated
    inner join users on rated.user_id = users.user_id
    where users.has_demographics and users.gender is not null
    group by users.age_band, users.gender, rated.movie_id

    union all

    select
        'occupation' as list_type,
        users.occupation as segment,
        rated.movie_id,
        count(*) as n,
        avg(rated.rating) as mean
    from rated
    inner join users on rated.user_id = users.user_id
    where users.has_demographics
    group by users.occupation, rated.movie_id

    union all

    select
        'season' as list_type,
        season as segment,
        movie_id,
        count(*) as n,
        avg(rating) as mean
    from rated
    where season is not null
    group by season, movie_id

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
        cast(n as integer) as rating_count,
        cast(mean as double precision) as mean_rating,
        list_type || '|' || segment || '|' || rank as list_position

    from ranked
    where rank <= {{ var('popular_n') }}

)

select * from final
