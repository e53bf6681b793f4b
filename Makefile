# make run  - fresh machine to running app (web + Celery worker + beat) on 127.0.0.1:$(PORT)
# make test - the whole test suite (installs PostgreSQL, Redis and Chromium when missing; starts its own servers)
# make demo - a local OAuth provider to try it with, and its two connections (beside make run; Ctrl-C stops it)
# make lint - ruff, mypy and the import contracts (CI runs it before the tests)
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PORT ?= 8000

.PHONY: run demo test lint lock clean

# Installs come from the lock files: every package, the transitive ones too, pinned with its hashes.
$(VENV)/.run-installed: requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	touch $@

$(VENV)/.test-installed: requirements.lock requirements-test.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-test.lock
	touch $@ $(VENV)/.run-installed

# After changing requirements.txt or requirements-test.txt (the direct dependencies): regenerate both lock files,
# with the hashes of every file the index has for each pinned version. The index is the one pip's own configuration
# names (pip.conf, PIP_INDEX_URL, a mirror): none is written here, and the lock files carry no index address or
# local path (--no-emit-*), their header saying `make lock` (CUSTOM_COMPILE_COMMAND) rather than this command line.
# pip-compile keeps the pins already in a lock file wherever the requirements still allow them.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip-tools==7.6.2
	for input in requirements requirements-test; do \
		CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --strip-extras \
			--no-emit-index-url --no-emit-find-links --output-file $$input.lock $$input.txt; \
	done

# Development secrets, generated once and kept: CRYPTOGRAPHY_KEY must not change, or stored secrets are lost.
.env:
	@$(PYTHON) -c "import secrets; print('DEBUG=true'); print('SECRET_KEY=' + secrets.token_urlsafe(50)); print('CRYPTOGRAPHY_KEY=' + secrets.token_urlsafe(50))" > .env
	@echo "Wrote .env with DEBUG=true and fresh SECRET_KEY / CRYPTOGRAPHY_KEY (keep it; see .env.example)."

# Ctrl-C: honcho sends SIGTERM to every process and exits with status 130, which is no error here. It SIGKILLs
# what still runs 5 s later (honcho 2.0's KILL_WAIT, no option sets it). An idle Celery worker takes about 4 s to
# stop (its consumer loop wakes every 2 s, whatever the broker's polling interval), and a busy one first finishes
# its refreshes, each bounded by OUTBOUND_TIMEOUT: killed mid-refresh, a rotated refresh token could be lost. So
# honcho is told to wait up to 30 s (honcho is pinned in requirements.txt; the constant is read at shutdown).
HONCHO := import honcho.command, honcho.manager; honcho.manager.KILL_WAIT = 30; honcho.command.main()

# The administrator's generated password comes last before the processes start, so their output does not bury it.
run: $(VENV)/.run-installed .env
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py sync_providers
	@echo "Control Room: http://127.0.0.1:$(PORT)/admin/  (health: http://127.0.0.1:$(PORT)/healthz). Ctrl-C stops everything."
	@$(BIN)/python manage.py ensure_admin
	@PATH="$(BIN):$$PATH" CONTROLROOM_PORT=$(PORT) $(BIN)/python -c "$(HONCHO)" --procfile Procfile start || test $$? -eq 130

# The loopback provider the tests use (tests/authserver: django-oauth-toolkit, a test requirement), on
# 127.0.0.1:$(DEMO_PROVIDER_PORT), and the connections that match it in Control Room (README, "Try it without a real
# provider"). Run beside `make run`, with the same PORT.
DEMO_PROVIDER_PORT ?= 9100
demo: $(VENV)/.test-installed .env
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py sync_providers
	@PORT=$(PORT) $(BIN)/python manage.py demo_provider --port $(DEMO_PROVIDER_PORT) || test $$? -eq 130

# Two workers (pytest-xdist), each with its own PostgreSQL, Redis and authorization server; the tests that start
# processes of their own all run on one of them (tests/conftest.py). PYTEST_ARGS="-n 0" runs all in this process.
# First the servers they start: installed when missing (as root, with apt), or the exact command to install them.
test: $(VENV)/.test-installed
	tests/support/install-servers
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# Style (ruff), types (mypy with django-stubs, which reads the settings: DEBUG=true gives it a development
# configuration) and the architecture's import contracts (import-linter, pyproject.toml).
lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=true ENV_FILE= $(BIN)/mypy
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) var
