-- The raw layer: one list-partitioned table per MovieLens file kind (partitions per
-- dataset, attached by ingest.py). The columns are the parsers' (formats.RAW_TABLES;
-- tests/test_warehouse.py checks the two agree); dataset, load_id and loaded_at are
-- added to every table.

create table if not exists raw.genres (
    dataset text not null,
    genre_id integer not null,
    genre text not null,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
create table if not exists raw.occupations (
    dataset text not null,
    occupation_id integer not null,
    occupation text not null,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
create table if not exists raw.movies (
    dataset text not null,
    movie_id integer not null,
    title text not null,
    genres text not null,
    release_date text,
    video_release_date text,
    imdb_url text,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
create table if not exists raw.users (
    dataset text not null,
    user_id integer not null,
    gender text not null,
    age integer,
    age_band_code integer,
    occupation_id integer,
    occupation text,
    zip_code text,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
create table if not exists raw.ratings (
    dataset text not null,
    user_id integer not null,
    movie_id integer not null,
    rating numeric(2,1) not null,
    rated_at_epoch bigint not null,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
create table if not exists raw.tags (
    dataset text not null,
    user_id integer not null,
    movie_id integer not null,
    tag text not null,
    tagged_at_epoch bigint not null,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
create table if not exists raw.links (
    dataset text not null,
    movie_id integer not null,
    imdb_id text,
    tmdb_id integer,
    load_id bigint not null,
    loaded_at timestamptz not null
) partition by list (dataset);
