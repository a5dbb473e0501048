with

source as (

    select * from {{ source('movielens', 'tags') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        user_id,
        movie_id,
        tag,
        to_timestamp(tagged_at_epoch) as tagged_at

    from source

)

select * from renamed
