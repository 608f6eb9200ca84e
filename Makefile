# Driftlog developer commands. `make run` and `make test` are the two the README opens with.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-repeat lint typecheck unit soak bench bench-coordinator cluster clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/driftlog serve

# Debian packages the tests talk to: kcat, and PostgreSQL 15 (tests/services.py runs its
# initdb and pg_ctl from PG_BIN). Installed only when missing; needs root or sudo.
PG_BIN ?= /usr/lib/postgresql/15/bin
system-deps:
	@missing=""; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	test -x $(PG_BIN)/initdb || missing="$$missing postgresql-15"; \
	[ -z "$$missing" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "apt-get install$$missing"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory test-repeat

# Membership must agree every time, not most times (issue 16): the cluster smoke test
# and the zone-hint test, REPEAT runs each, one after the other.
REPEAT ?= 20
test-repeat: $(STAMP) system-deps
	$(BIN)/pytest -q -p no:cacheprovider --count $(REPEAT) tests/cluster/test_smoke.py \
	  tests/cluster/test_cluster.py::test_metadata_honours_zone_hints

# Crashes, object-store faults and cut connections; fails if anything acknowledged is lost,
# duplicated (idempotent) or reordered, or offsets have gaps. `make soak DURATION=600 SEED=1`.
soak: $(STAMP)
	$(BIN)/python tests/soak/checker.py --duration $(or $(DURATION),600) --seed $(or $(SEED),1)

# A local cluster: PostgreSQL, moto's S3 server and three agents in two zones (Ctrl-C stops it).
cluster: $(STAMP) system-deps
	$(BIN)/python tools/local_cluster.py

# Object commits/s and latency with 1, 8 and 32 agents committing to one writer on PostgreSQL.
bench-coordinator: $(STAMP) system-deps
	$(BIN)/python bench/coordinator.py

# Driftlog vs Tansu throughput, then compaction and GC of many small objects (about 1.5 min).
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/produce_consume.py
	$(BIN)/python bench/lifecycle.py

clean:
	rm -rf $(VENV) .driftlog .pytest_cache .mypy_cache .ruff_cache
