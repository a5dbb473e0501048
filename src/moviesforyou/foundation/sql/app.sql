-- The app's own data: people who signed up through the API, their ratings, and the
-- two security-definer functions the read-only API writes through.
create table if not exists app.users (
    user_id integer primary key,
    dataset text not null,
    gender text check (gender in ('M', 'F')),
    age integer check (age between 1 and 120),
    occupation text,
    zip_code text,
    preferred_genres text[] not null default '{}',
    created_at timestamptz not null default now()
);
comment on table app.users is
    'People who signed up through the API, beyond the release''s own users.';
create table if not exists app.ratings (
    app_rating_id bigserial primary key,
    dataset text not null,
    user_id integer not null,
    movie_id integer not null,
    rating numeric(2, 1) not null
        check (rating between 0.5 and 5 and rating * 2 = round(rating * 2)),
    rated_at timestamptz not null default now(),
    received_at timestamptz not null default now()
);
comment on table app.ratings is
    'Ratings submitted through the API; the next nightly dbt build adds them to marts.fct_ratings.';
create index if not exists ratings_received_at_idx on app.ratings (received_at);
-- every lookup leaves out what the viewer rated since the publish: without it, each
-- one scanned all app ratings (2.6 ms at 40,000, 570 lookups/s on the 25M publish)
create index if not exists ratings_user_movie_idx on app.ratings (user_id, movie_id);

-- What viewers were shown (serving/exposures.py): append-only, written by the API in
-- batches (COPY) as the read-only role, which may insert here and nowhere else.
-- The films in rank order (the first is rank 1). Kept MFY_EXPOSURE_RETENTION_DAYS.
create table if not exists app.exposures (
    shown_at timestamptz not null,
    user_id integer not null,
    publish_id bigint,
    model_version text,
    arm text not null default 'champion',
    source text not null check (source in ('stored', 'live', 'cold')),
    channel text not null default 'api' check (channel in ('api', 'sql')),
    movie_ids integer[] not null
);
comment on table app.exposures is
    'Every list the API (or recs.recommend_logged in SQL) served: viewer, time, publish, '
    'model version, arm, source (stored list, live fold-in, cold start) and the films '
    'in rank order. Append-only; pruned after MFY_EXPOSURE_RETENTION_DAYS.';
create index if not exists exposures_shown_at_idx on app.exposures using brin (shown_at);

-- A viewer's arm in a champion-against-challenger experiment: the one definition
-- (foundation/experiments.py is the same rule in Python; a test checks they agree).
create or replace function app.arm_of(salt text, share double precision, user_id integer)
returns text
language sql immutable parallel safe as $$
    select case
        when salt is null or salt = '' or coalesce(share, 0) <= 0 then 'champion'
        when ('x' || substr(md5(salt || ':' || user_id::text), 1, 8))::bit(32)::bigint
             % 10000 < round(share * 10000) then 'challenger'
        else 'champion'
    end
$$;
comment on function app.arm_of(text, double precision, integer) is
    'The arm of a viewer in an experiment (ops.experiments; salt: its name, share: the '
    'challenger''s share): the first 32 bits of md5(salt:user_id) modulo 10,000, below '
    'share x 10,000 is the challenger''s. Without an experiment everyone is the champion''s.';

-- The season of a moment, as the cold-start season lists and marts.dim_dates name it:
-- the one definition (dbt's season_of macro calls it; the API asks it for today's).
create or replace function app.season_of(moment timestamp) returns text
language sql immutable parallel safe as $$
    select case
        when extract(month from moment) in (12, 1, 2) then 'Winter'
        when extract(month from moment) in (3, 4, 5) then 'Spring'
        when extract(month from moment) in (6, 7, 8) then 'Summer'
        else 'Autumn'
    end
$$;
comment on function app.season_of(timestamp) is
    'The season of a moment (Winter: December to February, and so on), as the season '
    'lists, marts.dim_dates and the API name it.';

-- The owner's ways to add a user and a rating; the API (the read-only role) goes through
-- the token-checked functions further down. They check what they are given.
create or replace function app.sign_up(p_dataset text, p_age integer, p_gender text,
        p_occupation text, p_zip_code text, p_preferred_genres text[])
    returns integer language plpgsql security definer
    set search_path = pg_catalog, pg_temp as $fn$
declare
    new_id integer;
begin
    lock table app.users in exclusive mode;  -- one id at a time
    select greatest(
        coalesce((select max(user_id) from app.users), 0),
        case when to_regclass('marts.dim_users') is null then 0
             else coalesce((select max(user_id) from marts.dim_users), 0) end,
        case when to_regclass('raw.users') is null then 0
             else coalesce((select max(user_id) from raw.users where dataset = p_dataset), 0)
        end) + 1
        into new_id;
    insert into app.users (user_id, dataset, gender, age, occupation, zip_code, preferred_genres)
    values (new_id, p_dataset, p_gender, p_age, p_occupation, p_zip_code,
            coalesce(p_preferred_genres, '{}'));
    return new_id;
end
$fn$;
create or replace function app.submit_rating(p_dataset text, p_user_id integer,
        p_movie_id integer, p_rating numeric)
    returns bigint language sql security definer
    set search_path = pg_catalog, pg_temp as $fn$
    insert into app.ratings (dataset, user_id, movie_id, rating)
    values (p_dataset, p_user_id, p_movie_id, p_rating)
    returning app_rating_id
$fn$;

-- Credentials of app users: a bearer token, given once at sign-up and stored only
-- as its SHA-256. Writes go through the functions below, which act for the
-- token's own user and nobody else.
create table if not exists app.tokens (
    token_hash text primary key check (token_hash ~ '^[0-9a-f]{64}$'),
    user_id integer not null references app.users (user_id),
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
comment on table app.tokens is
    'API bearer tokens (SHA-256 only) of app users; revoked_at set means no longer valid.';
create index if not exists tokens_user_id_idx on app.tokens (user_id);

create or replace function app.sign_up_with_token(p_dataset text, p_age integer,
        p_gender text, p_occupation text, p_zip_code text, p_preferred_genres text[],
        p_token_hash text)
    returns integer language plpgsql security definer
    set search_path = pg_catalog, pg_temp as $fn$
declare
    new_id integer;
begin
    new_id := app.sign_up(p_dataset, p_age, p_gender, p_occupation, p_zip_code,
                          p_preferred_genres);
    insert into app.tokens (token_hash, user_id) values (p_token_hash, new_id);
    return new_id;
end
$fn$;

create or replace function app.token_user(p_token_hash text)
    returns integer language sql stable security definer
    set search_path = pg_catalog, pg_temp as $fn$
    select user_id from app.tokens where token_hash = p_token_hash and revoked_at is null
$fn$;
comment on function app.token_user(text) is
    'The user a live token belongs to, or null.';

create or replace function app.has_token(p_user_id integer)
    returns boolean language sql stable security definer
    set search_path = pg_catalog, pg_temp as $fn$
    select exists (select 1 from app.tokens where user_id = p_user_id)
$fn$;
comment on function app.has_token(integer) is
    'Whether the user signed up with a credential (their history is then private).';

create or replace function app.submit_rating_as(p_token_hash text, p_dataset text,
        p_movie_id integer, p_rating numeric)
    returns bigint language plpgsql security definer
    set search_path = pg_catalog, pg_temp as $fn$
declare
    owner_id integer := app.token_user(p_token_hash);
    new_id bigint;
begin
    if owner_id is null then
        raise exception 'invalid or revoked token' using errcode = '28000';
    end if;
    insert into app.ratings (dataset, user_id, movie_id, rating)
    values (p_dataset, owner_id, p_movie_id, p_rating)
    returning app_rating_id into new_id;
    return new_id;
end
$fn$;
comment on function app.submit_rating_as(text, text, integer, numeric) is
    'The API''s way to store a rating: for the token''s own user only.';

create or replace function app.revoke_token(p_token_hash text)
    returns boolean language sql security definer
    set search_path = pg_catalog, pg_temp as $fn$
    update app.tokens set revoked_at = now()
    where token_hash = p_token_hash and revoked_at is null
    returning true
$fn$;
comment on function app.revoke_token(text) is 'Revoke a live token; true if it was live.';

-- Only the token-checked functions are the API's; the raw ones are the owner's.
revoke execute on function app.sign_up(text, integer, text, text, text, text[]) from public;
revoke execute on function app.submit_rating(text, integer, integer, numeric) from public;
revoke execute on function app.sign_up_with_token(text, integer, text, text, text, text[], text)
    from public;
