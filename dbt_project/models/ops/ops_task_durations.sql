{{ config(alias='task_durations') }}

with

runs as (

    select * from {{ source('ops', 'pipeline_runs') }}

),

final as (

    select
        runs.run_id,
        runs.finished_at,
        runs.state as run_state,
        task.key as task_id,
        task.value ->> 'state' as state,
        cast(task.value ->> 'seconds' as double precision) as seconds
    from runs
    cross join lateral jsonb_each(runs.tasks) as task  -- noqa: RF04

)

select * from final
