"""Superset settings for the compose stack: everything secret comes from the environment."""

import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
# its own database on the warehouse's server (docker-compose.yml builds the URL)
SQLALCHEMY_DATABASE_URI = os.environ["SUPERSET_DATABASE_URI"]
# dashboards read the warehouse as the read-only role; no DML from SQL Lab
PREVENT_UNSAFE_DB_CONNECTIONS = True
FEATURE_FLAGS = {"DASHBOARD_RBAC": True}
CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 300}
