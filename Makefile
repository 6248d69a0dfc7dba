# One entry point: `make run` (SQLite, demo data, http://127.0.0.1:8000) and `make test` (MariaDB).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
SYSTEM_PACKAGES := default-libmysqlclient-dev pkg-config
# The admin's browser test drives Debian's headless Chromium.
TEST_SYSTEM_PACKAGES := chromium chromium-driver
TEST_DATABASE_URL ?= mysql://root@127.0.0.1:3306/test
# CI builds the test database from scratch; locally it is kept between runs (dj-stripe's migrations are slow).
PYTEST_DB_FLAGS ?= $(if $(filter true,$(CI)),--create-db,--reuse-db)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps test-system-deps bench-deps apt-packages run test lint mariadb redis bench bench-profile bench-export bench-ledger bench-scale bench-http bench-profile-charge bench-quality bench-ydata cluster-packages cluster-up cluster-down cluster-status bench-cluster test-cluster clean

install: system-deps $(STAMP)

system-deps:
	@$(MAKE) --no-print-directory apt-packages PACKAGES="$(SYSTEM_PACKAGES)"

test-system-deps: system-deps
	@$(MAKE) --no-print-directory apt-packages PACKAGES="$(TEST_SYSTEM_PACKAGES)"

apt-packages:
	@if ! dpkg -s $(PACKAGES) >/dev/null 2>&1; then \
		echo "==> Installing Debian packages: $(PACKAGES)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PACKAGES) >/dev/null; \
	fi

$(STAMP): requirements.txt requirements-dev.txt
	@echo "==> Creating $(VENV) and installing pinned Python dependencies"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

# Local server on the embedded SQLite database, migrated and seeded, with a demo admin.
run: install
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py migrate --noinput
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py seed_agent_costs
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py create_demo_admin
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py runserver 127.0.0.1:8000

# Make sure the local MariaDB answers; start it if it is installed but down.
mariadb:
	@for i in $$(seq 1 30); do \
		$(BIN)/python -c "import MySQLdb; MySQLdb.connect(host='127.0.0.1', port=3306, user='root', passwd='')" 2>/dev/null && exit 0; \
		if [ $$i = 1 ] && [ -x /usr/sbin/mariadbd ]; then \
			echo "==> MariaDB is not answering on 127.0.0.1:3306; starting it"; \
			$(SUDO) start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
		fi; \
		sleep 1; \
	done; echo "MariaDB is unreachable on 127.0.0.1:3306"; exit 1

# The local Redis (broker for the real Celery worker in the tests); start it if installed but down.
redis:
	@for i in $$(seq 1 15); do \
		$(BIN)/python -c "import redis; redis.Redis(host='127.0.0.1', port=6379).ping()" 2>/dev/null && exit 0; \
		if [ $$i = 1 ] && command -v redis-server >/dev/null; then \
			echo "==> Redis is not answering on 127.0.0.1:6379; starting it"; \
			redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null; \
		fi; \
		sleep 1; \
	done; echo "Redis is unreachable on 127.0.0.1:6379"; exit 1

# The whole test suite on the local MariaDB. Exits non-zero if any test fails or none ran.
# The money path's tests once more with stored plans off: the plans sent as compound statements,
# as with CONN_MAX_AGE=0 or a database user without CREATE ROUTINE (billing/ledger/sql.py).
BLOCK_TESTS ?= tests/test_ledger.py tests/test_lots.py tests/test_ledger_concurrency.py \
	tests/test_ledger_properties.py tests/test_agent_run_billing.py tests/test_auto_recharge.py \
	tests/test_spend_caps.py tests/test_faults.py tests/test_cluster_faults.py

test: install test-system-deps mariadb redis
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest $(PYTEST_DB_FLAGS) $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,DATABASE_URL=$(TEST_DATABASE_URL) BILLING_STORED_PLANS=false $(BIN)/pytest --reuse-db -q $(BLOCK_TESTS))

# Benchmarks print their figures and write them to bench/results/.
# Bench-only tools: wrk (Debian) and the peers in bench/requirements.txt (django-hordak, pyinstrument).
bench-deps: install
	@$(MAKE) --no-print-directory apt-packages PACKAGES="wrk"
	@cmp -s bench/requirements.txt $(VENV)/.bench-requirements || \
		($(BIN)/pip install -q -r bench/requirements.txt && cp bench/requirements.txt $(VENV)/.bench-requirements)

# The ledger benchmarks in one bounded run (≤ 10 min); updates docs/performance.md.
bench: bench-deps mariadb cluster-packages
	$(BIN)/python -m bench

bench-profile: install
	$(BIN)/python -m bench.profile_100k

bench-export: install mariadb
	$(BIN)/python -m bench.export_csv

bench-ledger: bench-deps mariadb
	$(BIN)/python -m bench.ledger_throughput

bench-scale: bench-deps mariadb
	$(BIN)/python -m bench.ledger_scale

bench-http: bench-deps mariadb
	$(BIN)/python -m bench.http_load

bench-profile-charge: bench-deps mariadb
	$(BIN)/python -m bench.profile_charge

# The data agents: linkage on FEBRL and customers.csv next to recordlinkage, profiling (next to
# ydata-profiling, in its own virtualenv), cleaning.
bench-quality: bench-deps bench-ydata mariadb
	$(BIN)/python -m bench.quality

YDATA_VENV := .venv-ydata
bench-ydata: install
	@cmp -s bench/ydata/requirements.txt $(YDATA_VENV)/.requirements || \
		(echo "==> Creating $(YDATA_VENV) for ydata-profiling (the profiling reference)" && \
		$(PYTHON) -m venv $(YDATA_VENV) && $(YDATA_VENV)/bin/pip install -q -r bench/ydata/requirements.txt && \
		cp bench/ydata/requirements.txt $(YDATA_VENV)/.requirements)

# A 3-node MariaDB Galera cluster on loopback ports (4306-4308) and an asynchronous replica (4309),
# from Debian's packages; data under /tmp/ledger-galera (scripts/galera.sh says more).
CLUSTER_PACKAGES := mariadb-server galera-4 rsync
cluster-packages:
	@$(MAKE) --no-print-directory apt-packages PACKAGES="$(CLUSTER_PACKAGES)"

cluster-up: cluster-packages
	scripts/galera.sh up

cluster-down:
	scripts/galera.sh down

cluster-status:
	scripts/galera.sh status

# On a running cluster (make cluster-up): the ledger's invariants with writes on every node, then
# charges per second on the cluster next to the single server (also a step of `make bench`).
bench-cluster: install mariadb
	$(BIN)/python -m bench.cluster
	$(BIN)/python -m bench.cluster --throughput 10

# The cluster tests on a cluster of their own (up, tests, down; exits 1 on any failed check):
# the ledger's verbs on every node, then the service through 3 gunicorns, one per node, under
# mixed load for 60 s with node 2 killed and restarted (bench/cluster_http.py). `.ci/run` runs it.
test-cluster: install
	@$(MAKE) --no-print-directory cluster-up
	@status=0; $(BIN)/python -m bench.cluster && $(BIN)/python -m bench.cluster_http || status=$$?; \
		scripts/galera.sh down; exit $$status

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(YDATA_VENV) db.sqlite3 .pytest_cache
