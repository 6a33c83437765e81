# One command each, on a fresh machine: `make demo` (or `make serve`), `make test`, `make lint`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser demo serve test test-fast lint format bench bench-http bench-sqlalchemy pgbouncer clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Race 8 writers on one record in ./revstore.db (SQLite) and check the history.
demo: venv
	$(BIN)/revstore demo

## Start the HTTP service on ./revstore.db (SQLite), http://127.0.0.1:8000
serve: venv
	$(BIN)/revstore serve

## Debian's chromium, for the /ui browser test (Playwright drives it; installed once).
## Without it (no apt, not root) that test is skipped, loudly.
browser:
	@command -v chromium >/dev/null || apt-get install -y chromium \
	  || (apt-get update && apt-get install -y chromium) \
	  || echo "make browser: could not install chromium; the /ui browser test will be SKIPPED" >&2

## The whole suite on SQLite, PostgreSQL and MariaDB (slow concurrency tests included).
## The contract suites also run through PgBouncer when `make pgbouncer` has started it
## (skipped loudly otherwise, unless REVSTORE_TEST_REQUIRE=all or pgbouncer).
## Two pytest-xdist workers, each on databases of its own (tests/testdbs.py: <db>_gw0,
## <db>_gw1, created on the servers); loadgroup keeps each xdist_group on one worker.
test: venv browser
	$(BIN)/pytest -q -n 2 --dist loadgroup --durations=15

## The quick subset while developing.
test-fast: venv
	$(BIN)/pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

## PgBouncer on 127.0.0.1:6432, transaction pooling, in front of 127.0.0.1:5432
## (installs Debian's pgbouncer if needed; config in /tmp/revstore-pgbouncer).
pgbouncer:
	bash .ci/pgbouncer

bench: venv
	$(BIN)/python benchmarks/bench_store.py

## revstore serve beside the hand-written peer (benchmarks/peer_app.py), driven by wrk
## (installs Debian's wrk if missing); PostgreSQL on 127.0.0.1:5432 and SQLite, ~20 min.
bench-http: venv
	command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))
	$(BIN)/python benchmarks/bench_http_peer.py --json /tmp/bench-http-peer.json

## revstore.sqlalchemy beside SQLAlchemy-Continuum and plain version_id_col with retries:
## 16 writer threads on one hot row and on 1,000 rows, on SQLite, PostgreSQL and MariaDB
## (~1 min); the table goes to benchmarks/results/<date>-sqlalchemy.md.
bench-sqlalchemy: venv
	$(BIN)/python benchmarks/bench_sqlalchemy.py --seconds 5 \
	  --out benchmarks/results/$$(date -u +%F)-sqlalchemy.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
