# The two commands in README.md are `make run` and `make test`; both set up first.
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: setup run test lint warehouse-start warehouse-stop psql clean

setup:
	@./scripts/setup

run: setup          ## the nightly job on the embedded warehouse
	$(UV) run moviesforyou run

test: setup         ## the whole test suite on real components
	$(UV) run pytest

lint: setup
	$(UV) run ruff check src tests scripts benchmarks

warehouse-start: setup
	$(UV) run moviesforyou warehouse start

warehouse-stop:
	$(UV) run moviesforyou warehouse stop

psql: setup
	$(UV) run moviesforyou warehouse psql

clean:              ## stop the embedded warehouse and delete all local state (.mfy)
	-$(UV) run moviesforyou warehouse stop
	rm -rf .mfy
