with

source as (

    select * from {{ source('app', 'ratings') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        app_rating_id,
        dataset,
        user_id,
        movie_id,
        cast(rating as numeric(2, 1)) as rating,
        rated_at,
        received_at

    from source

)

select * from renamed
