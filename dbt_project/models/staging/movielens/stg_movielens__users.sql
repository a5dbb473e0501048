with

source as (

    select * from {{ source('movielens', 'users') }}
    where dataset = '{{ var("dataset") }}'

),

renamed as (

    select
        dataset,
        user_id,
        upper(gender) as gender,
        age as age_years,
        age_band_code,
        lower(trim(occupation)) as occupation,
        nullif(upper(trim(zip_code)), '') as zip_code

    from source

)

select * from renamed
