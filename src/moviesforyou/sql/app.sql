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

-- The API connects as the read-only role; these two functions are its only way to
-- write. They run as the owner, check what they are given, and touch nothing else.
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
