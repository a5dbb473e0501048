{#- Helpers of the incremental aggregates over fct_ratings.

    Every fct_ratings row carries `built_at`, the start of the dbt invocation
    that inserted it. An incremental aggregate stores the same time on the rows
    it writes (`through_built_at`); the newest of those is its watermark: every
    fct_ratings row built at or before it is already counted. The rows built
    after it are the aggregate's delta. -#}

{% macro batch_time() -%}
    cast('{{ run_started_at }}' as timestamptz)
{%- endmacro %}

{% macro ratings_watermark() -%}
    {#- A literal, read when the model compiles, so that Postgres plans the
        delta scan with the real bound (an index range scan of a few rows)
        rather than a generic one. -#}
    {%- if execute and is_incremental() -%}
        {%- set found = run_query(
            "select cast(max(through_built_at) as text) from " ~ this) -%}
        {%- set value = found.columns[0].values()[0] -%}
        {%- if value is not none -%}
            cast('{{ value }}' as timestamptz)
        {%- else -%}
            cast('-infinity' as timestamptz)
        {%- endif -%}
    {%- else -%}
        cast('-infinity' as timestamptz)
    {%- endif -%}
{%- endmacro %}

{% macro new_ratings() -%}
    {#- The fct_ratings rows this model has not counted yet: all of them on a
        full build. -#}
    select * from {{ ref('fct_ratings') }}
    {%- if is_incremental() %}
    where built_at > {{ ratings_watermark() }}
    {%- endif %}
{%- endmacro %}

{% macro season_of(ts) -%}
    {#- The warehouse's own definition (src/moviesforyou/foundation/sql/app.sql), which
        the API uses too; an inlined SQL function, so no cost per row. -#}
    app.season_of({{ ts }})
{%- endmacro %}

{% macro history_of_touched(key) -%}
    {#- Every fct_ratings row of the `key` values (users, say) that have rows
        this model has not counted yet: the whole history, so the aggregate can
        be recomputed for them. All rows on a full build. -#}
    select ratings.* from {{ ref('fct_ratings') }} as ratings
    {%- if is_incremental() %}
    where ratings.{{ key }} in (
        select new_ratings.{{ key }} from ({{ new_ratings() }}) as new_ratings
    )
    {%- endif %}
{%- endmacro %}

{% macro add_to_totals(delta, keys, sums, extra=[]) -%}
    {#- The totals after adding `delta` (a CTE with the same columns) to what
        the model holds: sums add up, `extra` columns are given as SQL over
        `delta` and `held` (say least(held.first_rated_at, delta.first_rated_at)).
        On a full build the delta is everything and is returned as it is. -#}
    {%- if is_incremental() %}
    select
        {%- for key in keys %}
        {{ delta }}.{{ key }},
        {%- endfor %}
        {%- for column in sums %}
        coalesce(held.{{ column }}, 0) + {{ delta }}.{{ column }} as {{ column }},
        {%- endfor %}
        {%- for column, expression in extra %}
        {{ expression }} as {{ column }},
        {%- endfor %}
        {{ batch_time() }} as through_built_at
    from {{ delta }}
    left join {{ this }} as held
        on
        {%- for key in keys %}
        held.{{ key }} = {{ delta }}.{{ key }}{% if not loop.last %} and{% endif %}
        {%- endfor %}
    {%- else %}
    select *, {{ batch_time() }} as through_built_at from {{ delta }}
    {%- endif %}
{%- endmacro %}

{% macro touched_months() -%}
    {#- The calendar months (UTC, 'YYYY-MM-DD' of their first day) of the ratings
        the model has not counted yet, as a list read when the model compiles:
        the model filters on them as literals, since a subquery made Postgres
        expect thousands of months and scan every rating. -#}
    {%- if execute and is_incremental() -%}
        {%- set found = run_query(
            "select distinct cast(date_trunc('month', rated_at at time zone 'UTC') as date)"
            ~ " from (" ~ new_ratings() ~ ") as new_ratings") -%}
        {{ return(found.columns[0].values() | map('string') | list) }}
    {%- endif -%}
    {{ return([]) }}
{%- endmacro %}
