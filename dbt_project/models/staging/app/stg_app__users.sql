with

source as (

    select * from {{ source('app', 'users') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        user_id,
        upper(gender) as gender,
        age as age_years,
        lower(trim(occupation)) as occupation,
        nullif(upper(trim(zip_code)), '') as zip_code,
        preferred_genres,
        created_at

    from source

)

select * from renamed
