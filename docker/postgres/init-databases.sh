#!/usr/bin/env bash
# Runs once, when the warehouse volume is first created (docker-entrypoint-initdb.d).
# One server, separate databases: the warehouse, Airflow's and MLflow's metadata,
# Superset's and Metabase's application databases. Passwords come from the environment.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
create role mfy_owner login createrole password '${MFY_OWNER_PASSWORD}';
create role mfy_reader login password '${MFY_READER_PASSWORD}';
alter role mfy_reader set statement_timeout = '60s';
create database moviesforyou owner mfy_owner;
create role airflow login password '${AIRFLOW_DB_PASSWORD}';
create database airflow owner airflow;
create role mlflow login password '${MLFLOW_DB_PASSWORD}';
create database mlflow owner mlflow;
create role superset login password '${SUPERSET_DB_PASSWORD}';
create database superset owner superset;
create role metabase login password '${METABASE_DB_PASSWORD}';
create database metabase owner metabase;
SQL
# the warehouse's schemas, grants and tables are created by `moviesforyou warehouse start`
# (the airflow-init service), as on any server
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname moviesforyou \
    -c "create extension if not exists pg_trgm"
