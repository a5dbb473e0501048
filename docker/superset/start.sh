#!/usr/bin/env bash
# Superset's first start: metadata database, admin user, roles, then the
# MoviesForYou dashboards (dashboards/superset), pointed at the warehouse as the
# read-only role. Re-running it is harmless: imports overwrite. Its arguments go to
# gunicorn (the image's CMD: --bind 0.0.0.0:8088).
#
# Where things are comes from docker-compose.yml (SUPERSET_DATABASE_URI in
# superset_config.py, MFY_SUPERSET_WAREHOUSE_URL) and from this script's own place in
# the image (/app/docker), so that tools/stack/ can run it natively too.
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
superset db upgrade
# --option=value: a password may begin with "-"
superset fab create-admin --username="${SUPERSET_ADMIN_USER:-admin}" \
    --firstname=Admin --lastname=MoviesForYou --email="${SUPERSET_ADMIN_EMAIL:-admin@example.com}" \
    --password="${SUPERSET_ADMIN_PASSWORD}" || true
superset init
# the warehouse URL (it holds the reader's password) stays in the environment
: "${MFY_SUPERSET_WAREHOUSE_URL:?is set in docker-compose.yml}"
python "$APP/mfy-dashboards/superset_bundle.py" import "$APP/mfy-dashboards" \
    --username "${SUPERSET_ADMIN_USER:-admin}"
exec gunicorn "$@" --workers 2 --timeout 120 "superset.app:create_app()"
