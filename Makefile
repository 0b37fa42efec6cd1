# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install install-dev run test test-storage-s3 test-cluster lint format bench migrate worker clean

# `make run` needs only the runtime packages; the test tools (playwright, schemathesis,
# hypothesis, ...) come with the first `make test` or `make lint`.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	./scripts/run.sh

# The cluster tests (tests/cluster, marker `cluster`) run on their own in `make test-cluster`:
# their processes are not measured by coverage, and they need PostgreSQL.
test: install-dev
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=90 --ignore=tests/cluster $(PYTEST_ARGS)

# The storage tests again (marker `storage`) with artifacts and backups on S3: a prefix per
# test on TEST_S3_ENDPOINT_URL's server, else moto started for the run (tests/storage.py).
# STORAGE_S3_SLOW is left out by default to keep CI short: modules where storage is a small
# part of a slow test (the admin, training, MLflow, killed workers, the restore drill in fresh
# processes; ~7 more minutes). `make test-storage-s3 STORAGE_S3_SLOW=` runs them too.
STORAGE_S3_SLOW ?= tests/mlregistry/test_admin.py tests/mlregistry/test_mlflow_models.py \
	tests/mlregistry/test_mlflow_registry.py tests/quality/test_training.py \
	tests/predictions/test_batch_worker.py tests/backups/test_worker.py \
	tests/backups/test_restore_drill.py
test-storage-s3: install-dev
	TEST_STORAGE=s3 $(PY) -m pytest -q -m storage -p no:cacheprovider \
		$(addprefix --ignore=,$(STORAGE_S3_SLOW)) $(PYTEST_ARGS)

# Two web replicas, two Celery workers and beat on a database of their own on DATABASE_URL's
# PostgreSQL server, a redis-server of their own and shared storage (docs/scaling.md).
test-cluster: install-dev
	$(PY) -m pytest -q -m cluster -p no:cacheprovider tests/cluster $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install-dev
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/storage_load.py
	$(PY) bench/batch.py $(BATCH_BENCH_ARGS)

migrate: install
	$(PY) manage.py migrate

clean:
	rm -rf var .pytest_cache .coverage htmlcov

# A longer fuzzing run than the suite's (FUZZ_EXAMPLES per operation and role).
.PHONY: fuzz
fuzz: install-dev
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} $(PY) -m pytest -q tests/fuzz $(PYTEST_ARGS)
