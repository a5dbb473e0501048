with

source as (

    select * from {{ source('movielens', 'links') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        movie_id,
        imdb_id,
        tmdb_id,
        'https://www.imdb.com/title/tt' || imdb_id || '/' as imdb_url,
        case
            when tmdb_id is not null
                then 'https://www.themoviedb.org/movie/' || tmdb_id
        end as tmdb_url

    from source

)

select * from renamed
