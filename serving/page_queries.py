"""The SQL of the pages' sections and rows (``serving/pages.py``, the page routes):
what a viewer rated, their genre and profile, similar films, the cold-start lists.
Every statement is parameterised, as in :mod:`serving.db`.
"""

from __future__ import annotations

from serving.db import MOVIE_COLUMNS

_RATED = """
    select movie_id, rating::float8 as rating, rated_at from marts.fct_ratings
    where user_id = $1 and dataset = $2
    union all
    select movie_id, rating::float8, rated_at from app.ratings
    where user_id = $1 and dataset = $2"""

#: Everything the user rated, and the film behind "Because you rated": their best
#: rating, the most recent first, among films that have neighbours.
SECTION_RATED = f"""
with rated as ({_RATED})
select r.movie_id, m.title,
       exists (select 1 from recs.similar_movies as s where s.movie_id = r.movie_id)
           as has_neighbours
from rated as r
join recs.movie_catalogue as m on m.movie_id = r.movie_id
order by r.rating desc, r.rated_at desc, r.movie_id
"""

#: The genre of most of the user's ratings of 4 and over (else of all their ratings).
SECTION_GENRE = f"""
with rated as ({_RATED})
select g.genre
from rated as r
join recs.movie_catalogue as m on m.movie_id = r.movie_id
cross join unnest(m.genres) as g (genre)
group by g.genre
order by count(*) filter (where r.rating >= 4) desc, count(*) desc, g.genre
limit 1
"""

SECTION_SIMILAR = f"""
select {MOVIE_COLUMNS}
from recs.similar_movies as s
join recs.movie_catalogue as m on m.movie_id = s.similar_movie_id
where s.movie_id = $1 and not (s.similar_movie_id = any($2::int[]))
order by s.rank
limit $3
"""

#: The user's stored list within one genre, then that genre's cold-start list.
SECTION_IN_GENRE = f"""
select {MOVIE_COLUMNS}
from (select r.movie_id, 0 as tier, r.rank from recs.user_recommendations as r
      where r.user_id = $1
      union all
      select p.movie_id, 1, p.rank from recs.popular_movies as p
      where p.list_type = 'genre' and p.segment = $2) as c
join recs.movie_catalogue as m on m.movie_id = c.movie_id
where $2 = any(m.genres) and not (c.movie_id = any($3::int[]))
order by c.tier, c.rank
limit $4 * 2
"""

SECTION_LIST = f"""
select {MOVIE_COLUMNS}
from recs.popular_movies as p
join recs.movie_catalogue as m on m.movie_id = p.movie_id
where p.list_type = $1 and p.segment = $2 and not (p.movie_id = any($3::int[]))
order by p.rank
limit $4
"""

#: The genres with the most rated lists, for the home page's rows.
HOME_GENRES = """
select segment from recs.popular_movies where list_type = 'genre'
group by segment order by sum(score) desc, segment limit $1
"""

#: Who the user is, as the cold-start lists segment people (release file or sign-up).
SECTION_PROFILE = """
select coalesce(a.preferred_genres, '{}') as preferred_genres,
       case when d.has_demographics and d.gender is not null
            then d.age_band || ' ' || d.gender
            when a.gender is not null and a.age is not null
            then recs.age_band(a.age) || ' ' || a.gender end as age_gender,
       coalesce(nullif(d.occupation, 'unknown'), a.occupation) as occupation,
       nullif(d.zip_region, 'Unknown') as region
from (select $1::integer as user_id) as me
left join marts.dim_users as d on d.user_id = me.user_id
left join app.users as a on a.user_id = me.user_id
"""

#: The cold-start lists the live publish has, with their segments: what sign-up can offer.
COLD_START_LISTS = """
select list_type, array_agg(distinct segment order by segment) as segments
from recs.popular_movies group by list_type order by list_type
"""

OCCUPATIONS = """
select distinct occupation from marts.dim_users
where occupation is not null and occupation <> 'unknown' order by occupation
"""
