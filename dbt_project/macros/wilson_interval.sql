{%- macro wilson_bound(successes, trials, side, z=1.96) -%}
{#- One end (side 'low' or 'high') of the Wilson score interval of a proportion
    successes / trials at the confidence z gives (1.96: 95%); null without trials. -#}
{%- set sign = '-' if side == 'low' else '+' -%}
case
    when ({{ trials }}) > 0 then {{ 'greatest(0.0, ' if side == 'low' else 'least(1.0, ' }}(
        cast({{ successes }} as double precision) / ({{ trials }})
        + {{ z }} * {{ z }} / (2.0 * ({{ trials }}))
        {{ sign }} {{ z }} * sqrt(
            (cast({{ successes }} as double precision) / ({{ trials }}))
            * (1 - cast({{ successes }} as double precision) / ({{ trials }}))
            / ({{ trials }})
            + {{ z }} * {{ z }} / (4.0 * ({{ trials }}) * ({{ trials }}))
        )
    ) / (1 + {{ z }} * {{ z }} / ({{ trials }})))
end
{%- endmacro -%}


{%- macro share_with_interval(successes, trials, name) -%}
{#- Three columns: the share successes / trials as name (null without trials) and
    its 95% Wilson interval as name_low and name_high. -#}
cast({{ successes }} as double precision) / nullif({{ trials }}, 0) as {{ name }},
{{ wilson_bound(successes, trials, 'low') }} as {{ name }}_low,
{{ wilson_bound(successes, trials, 'high') }} as {{ name }}_high
{%- endmacro -%}
