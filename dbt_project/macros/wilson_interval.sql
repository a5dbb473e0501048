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
