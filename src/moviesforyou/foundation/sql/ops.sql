-- Operational history the platform keeps beside MLflow: the load ledger, model
-- promotions, publishes, validations, pipeline runs, recs quality and freshness.
-- The views the dashboards read over these tables, and ops.recs_quality's rows,
-- are dbt models (dbt_project/models/ops).

create table if not exists ops.source_loads (
    load_id bigserial primary key,
    dataset text not null,
    source text not null,
    status text not null,
    archive_sha256 text,
    files jsonb not null default '{}'::jsonb,
    row_counts jsonb not null default '{}'::jsonb,
    error text,
    loaded_by text not null,
    started_at timestamptz not null,
    loaded_at timestamptz not null default now(),
    duration_s numeric(10, 2)
);
comment on table ops.source_loads is
    'Ledger of MovieLens loads into raw: one row per attempt, with file checksums and row counts.';
create index if not exists source_loads_dataset_idx on ops.source_loads (dataset, load_id desc);
alter table ops.source_loads add column if not exists layout text;
comment on column ops.source_loads.layout is
    'The release''s file layout (100k, 1m or csv): what it has (sources.FEATURES).';
alter table ops.source_loads add column if not exists features jsonb;
comment on column ops.source_loads.features is
    'What the load''s release has (demographics, half stars, tags, links): its layout''s '
    'features, with those of optional files it lacks off (releases.features_of).';
alter table ops.source_loads add column if not exists merged_entries integer;
comment on column ops.source_loads.merged_entries is
    'Catalogue entries of the load merged into another entry of the same film (dbt''s '
    'int_movie_merges: the same IMDb id, or title, year and genres); counted by the build '
    'that modelled the load.';
alter table ops.source_loads add column if not exists schema_name text;
comment on column ops.source_loads.schema_name is
    'Where a staged load is being audited (raw_staging__<dataset>), or where a rejected load '
    'is kept for inspection (raw_rejected__<dataset>, the newest rejected load only).';
alter table ops.source_loads drop constraint if exists source_loads_status_check;
alter table ops.source_loads add constraint source_loads_status_check
    check (status in ('staging', 'staged', 'loaded', 'unchanged', 'rejected', 'failed'));
comment on column ops.source_loads.status is
    'staging (being written beside raw), staged (written, being audited), loaded (audited and '
    'live), unchanged (same files as the last good load), rejected (failed the raw suite; kept '
    'aside), failed (a file did not parse, the load was abandoned, or its writer died).';
create table if not exists ops.model_promotions (
    promotion_id bigserial primary key,
    decided_at timestamptz not null default now(),
    model_name text not null,
    challenger_version text,
    champion_version_before text,
    champion_version_after text,
    promoted boolean not null,
    action text not null check (action in ('gate', 'rollback')),
    reason text not null,
    dataset text,
    snapshot_digest text,
    metrics jsonb not null default '{}'::jsonb,
    mlflow_run_id text
);
comment on table ops.model_promotions is
    'Every champion decision: gate outcomes and rollbacks, with the figures behind them.';
alter table ops.model_promotions add column if not exists warning text;
comment on column ops.model_promotions.warning is
    'Why the gate could not judge (a holdout too thin to tell models apart), or null.';
alter table ops.model_promotions drop constraint if exists model_promotions_action_check;
alter table ops.model_promotions add constraint model_promotions_action_check
    check (action in ('gate', 'rollback', 'experiment'));
-- Champion against challenger, live: a publish serves a fixed challenger version's
-- lists to the viewers app.arm_of(name, share, user_id) puts in its arm.
create table if not exists ops.experiments (
    experiment_id bigserial primary key,
    name text not null unique,
    dataset text not null,
    model_name text not null,
    challenger_version text not null,
    champion_version_at_start text,
    share double precision not null check (share > 0 and share < 1),
    started_at timestamptz not null default now(),
    ended_at timestamptz,
    outcome text,
    reason text
);
create unique index if not exists experiments_one_running_idx
    on ops.experiments (dataset) where ended_at is null;
comment on table ops.experiments is
    'Champion-against-challenger experiments (MFY_CHALLENGER_SHARE): the challenger version '
    'they serve, the share of viewers in its arm (name is the arm hash''s salt), and how '
    'they ended (outcome promoted or stopped). At most one runs per release.';
create table if not exists ops.publish_log (
    publish_id bigserial primary key,
    action text not null check (action in ('publish', 'rollback')),
    status text not null
        check (status in ('building', 'failed', 'live', 'archived', 'dropped')),
    dataset text not null,
    model_name text,
    model_version text,
    mlflow_run_id text,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    went_live_at timestamptz,
    row_counts jsonb not null default '{}'::jsonb,
    timings jsonb not null default '{}'::jsonb,
    validation jsonb,
    metrics jsonb not null default '{}'::jsonb,
    swap_lock_ms double precision,
    error text
);
alter table ops.publish_log add column if not exists experiment text;
comment on column ops.publish_log.experiment is
    'The champion-against-challenger experiment (ops.experiments.name) the publish served, '
    'or null.';
create table if not exists ops.pipeline_runs (
    dag_id text not null,
    run_id text not null,
    logical_date timestamptz,
    dataset text not null,
    state text not null check (state in ('success', 'failed', 'skipped')),
    started_at timestamptz,
    finished_at timestamptz not null default now(),
    source_status text,
    trained boolean not null default false,
    promoted boolean,
    published boolean not null default false,
    model_version text,
    publish_id bigint,
    tasks jsonb not null default '{}'::jsonb,
    row_counts jsonb not null default '{}'::jsonb,
    metrics jsonb not null default '{}'::jsonb,
    note text,
    primary key (dag_id, run_id)
);
comment on table ops.pipeline_runs is
    'One row per nightly DAG run (re-runs overwrite it): each task''s state and seconds, '
    'row counts, model metrics, the model version and whether recommendations were published.';
alter table ops.pipeline_runs add column if not exists errors jsonb not null default '{}'::jsonb;
alter table ops.pipeline_runs add column if not exists warnings jsonb not null
    default '[]'::jsonb;
comment on column ops.pipeline_runs.warnings is
    'What the run could not vouch for though it published (a holdout too thin to judge).';
comment on column ops.pipeline_runs.errors is
    'Per failed task, the message of the exception that failed it.';
comment on column ops.pipeline_runs.note is
    'How the run ended, in a sentence: what is live now and why the run did what it did.';
create table if not exists ops.recs_quality (
    publish_id bigint primary key,
    model_version text,
    measured_at timestamptz not null default now(),
    users integer not null,
    recommendations bigint not null,
    catalogue_movies integer not null,
    recommended_movies integer not null,
    catalogue_coverage double precision not null,
    mean_popularity_percentile double precision,
    share_of_top_10pct double precision
);
comment on table ops.recs_quality is
    'Per publish: catalogue coverage of the published lists and their popularity bias '
    '(mean popularity percentile of recommended movies; share from the 10% most rated). '
    'Written by the recs_freshness DAG after each publish.';
create table if not exists ops.freshness_checks (
    check_id bigserial primary key,
    checked_at timestamptz not null default now(),
    dataset text not null,
    publish_id bigint,
    published_hours_ago double precision,
    ratings_through timestamptz,
    source_checked_hours_ago double precision,
    pending_app_ratings integer not null,
    max_age_hours double precision not null,
    is_fresh boolean not null
);
comment on table ops.freshness_checks is
    'Each freshness check of the served recommendations (recs_freshness DAG).';
create table if not exists ops.validations (
    validation_id bigserial primary key,
    validated_at timestamptz not null default now(),
    layer text not null,
    dataset text not null,
    schema_name text not null,
    subject text,
    success boolean not null,
    evaluated integer not null,
    failures jsonb not null default '[]'::jsonb,
    seconds double precision
);
comment on table ops.validations is
    'Every Great Expectations validation: layer, what it validated (subject: the raw load '
    'or the publish), the outcome and the failing expectations.';
-- flat views of the jsonb columns, for dashboards
comment on table ops.publish_log is
    'Every publish of the recs tables and every rollback: model version, row counts, '
    'step timings, the Great Expectations result and how long the swap held its locks.';
create table if not exists ops.writer (
    only_row boolean primary key default true check (only_row),
    holder text not null,
    host text not null,
    pid integer not null,
    since timestamptz not null default now()
);
comment on table ops.writer is
    'Who took the warehouse''s writer lock last (warehouse.writer_lock): the holder '
    'while the advisory lock is held, the last one after.';
-- A warehouse upgraded in place: the published catalogue gains the merged ids of
-- each film (empty until the next publish fills them), so the API and the SQL
-- functions that read them work before that publish.
do $upgrade$
begin
    if to_regclass('recs.movie_catalogue') is not null then
        alter table recs.movie_catalogue
            add column if not exists merged_movie_ids integer[] not null default '{}';
    end if;
end
$upgrade$;
