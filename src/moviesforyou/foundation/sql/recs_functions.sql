-- SQL functions on the published recs tables: predictions in plain SQL.
-- (Re)created by `moviesforyou publish` after each swap; they run as the caller,
-- so the read-only role can use them in Metabase, Superset or psql.

create or replace function recs.age_band(age integer) returns text
language sql immutable parallel safe as $$
    select case
        when age is null then 'Unknown'
        when age < 18 then 'Under 18'
        when age < 25 then '18-24'
        when age < 35 then '25-34'
        when age < 45 then '35-44'
        when age < 50 then '45-49'
        when age < 56 then '50-55'
        else '56+'
    end
$$;
comment on function recs.age_band(integer) is
    'The MovieLens age band of an age in years, as in marts.dim_users.age_band.';

create or replace function recs.film_id(p_movie_id integer) returns integer
language sql stable parallel safe as $$
    select c.movie_id from recs.movie_catalogue as c where c.movie_id = p_movie_id
    union all
    select c.movie_id from recs.movie_catalogue as c
    where c.merged_movie_ids @> array[p_movie_id]
    limit 1
$$;
comment on function recs.film_id(integer) is
    'The published film an id of the release names: the id itself, or the film a '
    'duplicate catalogue entry was merged into (recs.movie_catalogue.merged_movie_ids); '
    'null for an id not in the catalogue.';

create or replace function recs.arm(p_user_id integer) returns text
language sql stable parallel safe as $$
    select app.arm_of(pub.experiment, pub.challenger_share, p_user_id)
    from recs.publication as pub
$$;
comment on function recs.arm(integer) is
    'The arm the live publish serves a viewer: challenger for the share of viewers of a '
    'running experiment (app.arm_of), else champion.';

create or replace function recs.predict_rating(p_user_id integer, p_movie_id integer)
returns double precision
language sql stable parallel safe as $$
    select greatest(a.rating_min, least(a.rating_max,
        a.global_mean + coalesce(u.bias, 0) + m.bias
        + coalesce((select sum(x * y)
                    from unnest(u.explicit_factors, m.explicit_factors) as t (x, y)), 0)))
    from recs.publication as pub
    -- app.arm_of inlines; recs.arm, a function with a FROM, would be planned per query
    join recs.arms as a on a.arm = app.arm_of(pub.experiment, pub.challenger_share, p_user_id)
    join recs.movie_factors as m
        on m.arm = a.arm and m.movie_id = recs.film_id(p_movie_id)
    left join recs.user_factors as u on u.user_id = p_user_id and u.arm = a.arm
$$;
comment on function recs.predict_rating(integer, integer) is
    'Predicted star rating of a user for a movie by the explicit model of the user''s arm '
    '(global mean + biases + factors, clipped to the rating scale). A user the model does '
    'not know gets the bias baseline; a movie it does not know gets null. A merged '
    'duplicate id counts as its film (recs.film_id).';

create or replace function recs.recommend(
    p_user_id integer, k integer default 10, exclude_genres text[] default '{}')
returns table (
    rank integer, movie_id integer, title text, release_year integer, genres text[],
    score double precision, predicted_rating double precision, source text,
    model_version text, publish_id bigint
)
language plpgsql stable
-- each branch's plan is made once per session and kept: plpgsql otherwise kept
-- re-planning for each user id (custom plans), 0.4 ms of a 0.8 ms lookup at 25M
set plan_cache_mode = force_generic_plan
as $$
declare
    got integer;
    skippable bigint;
begin
    -- plpgsql rather than sql: each branch's plan is cached per session, which
    -- keeps the API's lookup at a fraction of a millisecond
    return query
        select (row_number() over (order by r.rank))::integer, r.movie_id, m.title,
               m.release_year, m.genres, r.score, r.predicted_rating, r.source,
               r.model_version, r.publish_id
        from recs.user_recommendations as r
        join recs.movie_catalogue as m on m.movie_id = r.movie_id
        where r.user_id = p_user_id
            and not (m.genres && coalesce(exclude_genres, '{}'))
            and not exists (select 1 from app.ratings as a
                            where a.user_id = p_user_id and a.movie_id = r.movie_id)
        order by r.rank
        limit greatest(k, 0);
    get diagnostics got = row_count;
    if got >= k then
        return;
    end if;
    -- The stored list ran short (excluded genres, movies rated since the publish):
    -- a user the model knows gets the rest scored now from the published implicit
    -- factors, the same dot product Spark ranked the stored list by. Only the best
    -- (k - got + skippable) of the allowed genres are checked against what the user
    -- rated or was already given: at most that many of them can be skipped, so the
    -- answer is the same as checking every movie, at the cost of a few index probes.
    if exists (select 1 from recs.user_factors as u
               where u.user_id = p_user_id and u.implicit_factors is not null) then
        -- a session that tops lists up itself says so (the API, in NumPy, from the
        -- movie factors it keeps in memory): a setting rather than an argument, so
        -- that any API version works with any version of this function
        if current_setting('mfy.recommend_top_up', true) = 'off' then
            return;
        end if;
        select (select count(*) from marts.fct_ratings as f
                where f.user_id = p_user_id)
             + (select count(*) from app.ratings as a where a.user_id = p_user_id)
             + (select count(*) from recs.user_recommendations as r
                where r.user_id = p_user_id)
          into skippable;
        return query
            with me as (
                select u.implicit_factors, u.arm from recs.user_factors as u
                where u.user_id = p_user_id
            ),
            best as (
                select f.movie_id, m.title, m.release_year, m.genres,
                       recs.implicit_dot(me.implicit_factors, f.implicit_factors) as score
                from recs.movie_factors as f
                join recs.movie_catalogue as m on m.movie_id = f.movie_id
                cross join me
                where f.arm = me.arm and f.implicit_factors is not null
                    and not (m.genres && coalesce(exclude_genres, '{}'))
                order by score desc, f.movie_id
                limit k - got + skippable
            )
            select (got + row_number() over (order by s.score desc, s.movie_id))::integer,
                   s.movie_id, s.title, s.release_year, s.genres, s.score,
                   recs.predict_rating(p_user_id, s.movie_id), 'als'::text,
                   arm_model.model_version, pub.publish_id
            from best as s
            cross join recs.publication as pub
            join recs.arms as arm_model
                on arm_model.arm = app.arm_of(pub.experiment, pub.challenger_share, p_user_id)
            where not exists (select 1 from recs.user_recommendations as r
                              where r.user_id = p_user_id and r.movie_id = s.movie_id)
                and not exists (select 1 from marts.fct_ratings as f
                                where f.user_id = p_user_id and f.movie_id = s.movie_id
                                    and f.dataset = pub.dataset)
                and not exists (select 1 from app.ratings as a
                                where a.user_id = p_user_id and a.movie_id = s.movie_id)
            order by s.score desc, s.movie_id
            limit k - got;
        return;
    end if;
    -- newcomers: their preferred genres first (interleaved), then their
    -- demographic segment, then their occupation, then the overall list;
    -- after any stored rows of a user the model has no factors for
    return query
        with profile as (
            select u.* from app.users as u where u.user_id = p_user_id
        ),
        cold as (
            select p.movie_id, p.score, p.list_type || ':' || p.segment as source,
                   p.rank as pos,
                   case p.list_type when 'genre' then 1 when 'age_gender' then 2
                                    when 'occupation' then 3 else 4 end as tier,
                   p.model_version, p.publish_id
            from recs.popular_movies as p
            left join profile on true
            where p.list_type = 'overall'
                or (p.list_type = 'genre' and p.segment = any(profile.preferred_genres))
                or (p.list_type = 'age_gender'
                    and p.segment = recs.age_band(profile.age) || ' ' || profile.gender)
                or (p.list_type = 'occupation' and p.segment = profile.occupation)
        ),
        candidates as (
            select distinct on (c.movie_id) c.*, m.title, m.release_year, m.genres
            from cold as c
            join recs.movie_catalogue as m on m.movie_id = c.movie_id
            where not (m.genres && coalesce(exclude_genres, '{}'))
                and not exists (select 1 from app.ratings as a
                                where a.user_id = p_user_id and a.movie_id = c.movie_id)
                and not exists (select 1 from recs.user_recommendations as r
                                where r.user_id = p_user_id and r.movie_id = c.movie_id)
                and not exists (select 1 from marts.fct_ratings as f
                                join recs.publication as pub on pub.dataset = f.dataset
                                where f.user_id = p_user_id and f.movie_id = c.movie_id)
            order by c.movie_id, c.tier, c.pos
        )
        select (got + row_number() over (order by c.tier, c.pos, c.movie_id))::integer,
               c.movie_id, c.title, c.release_year, c.genres, c.score,
               recs.predict_rating(p_user_id, c.movie_id), c.source, c.model_version,
               c.publish_id
        from candidates as c
        order by c.tier, c.pos, c.movie_id
        limit greatest(k - got, 0);
end
$$;
comment on function recs.recommend(integer, integer, text[]) is
    'Top-k recommendations for a user, without movies of the excluded genres. Users the '
    'model knows get their ALS list, topped up by scoring the rest of the catalogue with '
    'their published factors when exclusions leave it short of k (not in sessions that '
    'set mfy.recommend_top_up to off: they get the stored rows only); others (newcomers '
    'signed up through the API, unknown ids) get cold-start lists: preferred genres, age '
    'band and gender, occupation, overall.';

create or replace function recs.recommend_logged(
    p_user_id integer, k integer default 10, exclude_genres text[] default '{}')
returns table (
    rank integer, movie_id integer, title text, release_year integer, genres text[],
    score double precision, predicted_rating double precision, source text,
    model_version text, publish_id bigint
)
language sql volatile as $$
    with shown as (
        select * from recs.recommend(p_user_id, k, exclude_genres)
    ),
    logged as (
        insert into app.exposures (shown_at, user_id, publish_id, model_version, arm, source,
                                   channel, movie_ids)
        select now(), p_user_id, min(s.publish_id), min(s.model_version),
               (select app.arm_of(pub.experiment, pub.challenger_share, p_user_id)
                from recs.publication as pub),
               case when bool_and(s.source = 'als') then 'stored' else 'cold' end, 'sql',
               array_agg(s.movie_id order by s.rank)
        from shown as s
        having count(*) > 0
    )
    select * from shown as s order by s.rank
$$;
comment on function recs.recommend_logged(integer, integer, text[]) is
    'recs.recommend, and the list it gave recorded in the exposure log (app.exposures, '
    'channel sql) like the API''s lookups: for an application that serves lists '
    'straight from SQL and wants them in the online measures.';
