{{ config(alias='model_metrics_by_run') }}

with

runs as (

    select * from {{ source('ops', 'pipeline_runs') }}
    where trained

),

challenger as (

    select
        runs.run_id,
        runs.finished_at,
        runs.model_version,
        runs.promoted,
        'ALS (challenger)' as model,  -- noqa: RF04
        metric.key as metric,
        cast(metric.value as double precision) as value  -- noqa: RF04
    from runs
    cross join lateral jsonb_each_text(runs.metrics -> 'model') as metric

),

baselines as (

    select
        runs.run_id,
        runs.finished_at,
        runs.model_version,
        runs.promoted,
        baseline.key as model,  -- noqa: RF04
        metric.key as metric,
        cast(metric.value as double precision) as value  -- noqa: RF04
    from runs
    cross join lateral jsonb_each(runs.metrics -> 'baselines') as baseline
    cross join lateral jsonb_each_text(baseline.value) as metric

),

final as (

    select * from challenger
    union all
    select * from baselines

)

select * from final
