-- The published recs tables, created in the build schema by publish.py (a psycopg2
-- template: {s} the schema, {pid} the publish id, {version} the model version,
-- {generated} the build time). user_factors and movie_factors are recs_factors.sql.
create table {s}.publication (
    publish_id bigint not null,
    dataset text not null,
    model_name text not null,
    model_version text not null,
    mlflow_run_id text,
    generated_at timestamptz not null,
    recommendations_per_user integer not null,
    global_mean double precision not null,
    rating_min double precision not null,
    rating_max double precision not null,
    ratings_through timestamptz,
    source_loaded_at timestamptz,
    -- what the API needs to fold a viewer in against the movie factors (foldin.py)
    explicit_reg_param double precision,
    implicit_reg_param double precision,
    implicit_alpha double precision,
    bias_reg_user double precision,
    -- the newest app rating in the marts at publish time: later ones are folded in live
    app_ratings_through timestamptz,
    -- the model families behind predicted ratings and lists (als, bpmf, ease)
    rating_family text not null default 'als',
    list_family text not null default 'als',
    -- champion against challenger (ops.experiments): the experiment's name (the arm
    -- hash's salt) and the challenger's share; null and 0 when none runs
    experiment text,
    challenger_share double precision not null default 0,
    constraint publication_p{pid}_pkey primary key (publish_id)
);
create table {s}.user_recommendations (
    user_id integer not null,
    rank integer not null,
    movie_id integer not null,
    score double precision not null,
    predicted_rating double precision,
    source text not null,
    -- the viewer's arm: champion, or challenger for an experiment's share of viewers
    arm text not null default 'champion',
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    generated_at timestamptz not null default {generated},
    constraint user_recommendations_p{pid}_pkey primary key (user_id, rank)
);
-- The model behind each arm and what a fold-in needs of it: one row (champion)
-- without an experiment, two with one.
create table {s}.arms (
    arm text not null,
    share double precision not null,
    model_name text not null,
    model_version text not null,
    mlflow_run_id text,
    global_mean double precision not null,
    rating_min double precision not null,
    rating_max double precision not null,
    explicit_reg_param double precision,
    implicit_reg_param double precision,
    implicit_alpha double precision,
    bias_reg_user double precision,
    rating_family text not null,
    list_family text not null,
    publish_id bigint not null default {pid},
    constraint arms_p{pid}_pkey primary key (arm)
);
create table {s}.similar_movies (
    movie_id integer not null,
    rank integer not null,
    similar_movie_id integer not null,
    similarity double precision not null,
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    generated_at timestamptz not null default {generated},
    constraint similar_movies_p{pid}_pkey primary key (movie_id, rank)
);
create table {s}.popular_movies (
    list_type text not null,
    segment text not null,
    rank integer not null,
    movie_id integer not null,
    score double precision not null,
    rating_count integer not null,
    mean_rating double precision,
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    generated_at timestamptz not null default {generated},
    constraint popular_movies_p{pid}_pkey primary key (list_type, segment, rank)
);
create table {s}.movie_catalogue (
    movie_id integer not null,
    title text not null,
    original_title text,
    release_year integer,
    genres text[] not null,
    mean_rating double precision,
    bayesian_rating double precision,
    rating_count integer not null,
    imdb_url text,
    search_text text not null,
    merged_movie_ids integer[] not null default '{{}}',
    publish_id bigint not null default {pid},
    constraint movie_catalogue_p{pid}_pkey primary key (movie_id)
);
