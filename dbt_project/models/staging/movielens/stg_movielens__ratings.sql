with

source as (

    select * from {{ source('movielens', 'ratings') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        user_id,
        movie_id,
        cast(rating as numeric(2, 1)) as rating,
        to_timestamp(rated_at_epoch) as rated_at,
        load_id,
        loaded_at

    from source

)

select * from renamed
