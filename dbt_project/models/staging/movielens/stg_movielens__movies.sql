{#- Titles are published as "Name, The (1995)": the year is split off, a
    trailing article moved to the front ("The Name"), and the published form
    kept as original_title. -#}
{%- set year_suffix = "\\s*\\((\\d{4})(?:[-–]\\d{0,4})?\\)\\s*$" -%}
{%- set articles = "The|A|An|Les|La|Le|Il|Das|Der|Die|Den|Det|El|Los|Las|Un|Une|Lo|O|Os|As|Gli|I" -%}
{%- set trailing_article = "^(.*), (" ~ articles ~ ")$" -%}

with

source as (

    select * from {{ source('movielens', 'movies') }}
    where dataset = '{{ var("dataset") }}'

),

parsed as (

    select
        dataset,
        movie_id,
        title as original_title,
        trim(regexp_replace(title, '{{ year_suffix }}', '')) as title_without_year,
        cast(substring(title from '{{ year_suffix }}') as integer) as release_year,
        case
            when release_date ~ '^\d{2}-[A-Za-z]{3}-\d{4}$'
                then to_date(release_date, 'DD-Mon-YYYY')
        end as release_date,
        nullif(trim(imdb_url), '') as imdb_url,
        array(
            select
                case genre
                    when 'Children''s' then 'Children'
                    else genre
                end as genre
            from unnest(string_to_array(genres, '|')) as genre
            where genre not in ('', 'unknown', '(no genres listed)')
            order by 1
        ) as genres

    from source

),

final as (

    select
        dataset,
        movie_id,
        case
            when title_without_year ~ ', L''$'
                then 'L''' || regexp_replace(title_without_year, ', L''$', '')
            else regexp_replace(title_without_year, '{{ trailing_article }}', '\2 \1')
        end as title,
        original_title,
        release_year,
        release_date,
        imdb_url,
        genres

    from parsed

)

select * from final
