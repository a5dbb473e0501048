{#- The catalogue as the API serves it: every film of the release (once, under its
    kept id, with the ids merged into it) with its
    figures and a lower-case search text for the trigram title search.
    publish.py copies this table into recs.movie_catalogue. -#}
with

movies as (

    select * from {{ ref('dim_movies') }}

),

final as (

    select
        movie_id,
        title,
        original_title,
        release_year,
        coalesce(genres, cast('{}' as text[])) as genres,
        mean_rating,
        bayesian_rating,
        rating_count,
        imdb_url,
        lower(concat_ws(' ', title, release_year, original_title)) as search_text,
        merged_movie_ids

    from movies

)

select * from final
