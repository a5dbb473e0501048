-- user_factors and movie_factors: the same shape, keyed by {key} (user_id or
-- movie_id; {keys}: the primary key); a psycopg2 template filled in by publish.py.
create table {s}.{table} (
    {key} integer not null,
    bias double precision not null,
    explicit_factors double precision[],
    implicit_factors double precision[],
    -- movies of an EASE list model: a viewer's vector is the sum over their ratings
    -- of rating x fold_weight x implicit_factors (null for ALS and for users)
    fold_weight double precision,
    -- the arm whose model these are: a viewer's are their arm's; a movie has a row
    -- per arm
    arm text not null default 'champion',
    model_version text not null default {version},
    publish_id bigint not null default {pid},
    constraint {pkey} primary key ({keys})
);
