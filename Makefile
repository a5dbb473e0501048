# The two commands in README.md are `make run` and `make test`; both set up first.
# After `scripts/setup` the locked environment is .venv: its commands run from there,
# first on PATH (no `uv run`, which could re-sync, and no uv needed on PATH at all).
VENV := $(CURDIR)/.venv/bin
IN_VENV := PATH="$(VENV):$$PATH" VIRTUAL_ENV="$(CURDIR)/.venv"
MFY := $(IN_VENV) $(VENV)/moviesforyou
# the project-local Airflow home `make run` records its runs in
AIRFLOW_ENV = AIRFLOW_HOME=$${AIRFLOW_HOME:-$(CURDIR)/.mfy/airflow} \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True

.PHONY: setup run test check docs docs-build screenshots lint airflow mlflow api psql dbt-docs warehouse-start warehouse-stop \
	up down compose-config stack-local clean

setup:
	@./scripts/setup

run: setup          ## the nightly job: the Airflow DAG once, on the embedded warehouse
	$(MFY) run

test: setup         ## the whole test suite on real components
	$(IN_VENV) $(VENV)/pytest

check: setup        ## the inner loop, under 2 minutes: ruff, sqlfluff, the import contract, unit tests
	$(IN_VENV) $(VENV)/ruff check src spark_jobs serving dags tests tools scripts benchmarks dashboards
	$(IN_VENV) $(VENV)/lint-imports
	$(IN_VENV) $(VENV)/sqlfluff lint dbt_project/models --processes 2 --disable-progress-bar
	$(IN_VENV) $(VENV)/pytest -q -m "not integration and not slow and not spark" -p no:cacheprovider \
		tests/test_lint.py tests/test_config.py tests/test_metrics.py tests/test_foldin.py \
		tests/test_synth.py tests/test_thresholds.py -k "not sqlfluff and not docs_site and not contract_catches"

docs: setup         ## the docs site on http://127.0.0.1:8000, rebuilt as you edit
	NO_MKDOCS_2_WARNING=1 $(IN_VENV) $(VENV)/mkdocs serve

docs-build: setup   ## the docs site into .mfy/site, strictly (a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(IN_VENV) $(VENV)/mkdocs build --strict

screenshots: setup  ## refresh docs/screenshots from the page and dashboard tests
	$(IN_VENV) $(VENV)/pytest --screenshots -k "page_ or dashboards_screenshots" \
		tests/test_pages.py tests/test_dashboards.py

lint: setup
	$(IN_VENV) $(VENV)/ruff check src spark_jobs serving dags tests tools scripts benchmarks dashboards
	$(IN_VENV) $(VENV)/sqlfluff lint dbt_project/models
	$(IN_VENV) $(VENV)/hadolint docker/Dockerfile docker/superset/Dockerfile

airflow: setup      ## Airflow UI (standalone) on http://127.0.0.1:8080, with `make run`'s history
	$(AIRFLOW_ENV) AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True \
		AIRFLOW__API__HOST=127.0.0.1 $(IN_VENV) $(VENV)/airflow standalone

mlflow: setup       ## MLflow UI on http://127.0.0.1:5000
	$(MFY) mlflow-ui

api: setup          ## the API and web page on http://127.0.0.1:8000
	$(MFY) serve

psql: setup
	$(MFY) warehouse psql

dbt-docs: setup     ## dbt docs on http://127.0.0.1:8081
	$(MFY) docs

warehouse-start: setup
	$(MFY) warehouse start

warehouse-stop:
	$(MFY) warehouse stop

up:                 ## the full stack in Docker (see README: docker compose)
	docker compose up -d --build

down:
	docker compose down

stack-local: setup  ## docker-compose.yml's services natively, no Docker (needs .env; README)
	PYTHONPATH=$(CURDIR)/tools $(IN_VENV) $(VENV)/python -m stack --env-file .env

compose-config:     ## validate docker-compose.yml without a Docker engine
	docker-compose config --quiet

clean:              ## stop the embedded warehouse and delete all local state (.mfy)
	-$(MFY) warehouse stop
	rm -rf .mfy
