{#- An md5 surrogate key over natural-key columns; nulls hash as '_null_'.
    (dbt_utils has the same idea; this project installs no packages so that
    it builds offline.) -#}
{% macro surrogate_key(columns) -%}
    md5(
        {%- for column in columns %}
        coalesce(cast({{ column }} as text), '_null_')
        {%- if not loop.last %} || '|' || {% endif %}
        {%- endfor %}
    )
{%- endmacro %}
