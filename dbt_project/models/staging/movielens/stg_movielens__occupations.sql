with

source as (

    select * from {{ source('movielens', 'occupations') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        occupation_id,
        lower(trim(occupation)) as occupation

    from source

)

select * from renamed
