{#- A date spine from the `date_spine_start` var to a year after today. -#}
{{ config(indexes=[{'columns': ['date_sk'], 'unique': True}]) }}
with

spine as (

    select cast(spine_day as date) as date_day
    from generate_series(
        date '{{ var("date_spine_start") }}',
        current_date + 365,
        interval '1 day'
    ) as spine_day

),

final as (

    select
        cast(to_char(date_day, 'YYYYMMDD') as integer) as date_sk,
        date_day,
        cast(extract(year from date_day) as integer) as calendar_year,
        cast(extract(quarter from date_day) as integer) as calendar_quarter,
        cast(extract(month from date_day) as integer) as calendar_month,
        trim(to_char(date_day, 'Month')) as month_name,
        cast(date_trunc('month', date_day) as date) as month_start,
        cast(extract(week from date_day) as integer) as iso_week,
        cast(extract(day from date_day) as integer) as day_of_month,
        cast(extract(isodow from date_day) as integer) as day_of_week,
        trim(to_char(date_day, 'Day')) as day_name,
        extract(isodow from date_day) in (6, 7) as is_weekend,
        {{ season_of('date_day') }} as season

    from spine

)

select * from final
