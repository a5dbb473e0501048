with

source as (

    select * from {{ source('movielens', 'genres') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        genre_id,
        case genre
            when 'Children''s' then 'Children'
            else genre
        end as genre

    from source
    where genre not in ('unknown', '(no genres listed)')

)

select * from renamed
