#!/usr/bin/env bash
# Superset's first start: metadata database, admin user, roles, then the
# MoviesForYou dashboards (dashboards/superset), pointed at the warehouse as the
# read-only role. Re-running it is harmless: imports overwrite.
set -euo pipefail
superset db upgrade
superset fab create-admin --username "${SUPERSET_ADMIN_USER:-admin}" \
    --firstname Admin --lastname MoviesForYou --email "${SUPERSET_ADMIN_EMAIL:-admin@example.com}" \
    --password "${SUPERSET_ADMIN_PASSWORD}" || true
superset init
python /app/mfy-dashboards/superset_bundle.py import /app/mfy-dashboards \
    --warehouse-url "postgresql://mfy_reader:${MFY_READER_PASSWORD}@warehouse:5432/moviesforyou" \
    --username "${SUPERSET_ADMIN_USER:-admin}"
exec gunicorn --bind 0.0.0.0:8088 --workers 2 --timeout 120 "superset.app:create_app()"
