# Developer entry points. `make test` and `make demo` work from a fresh clone: they create .venv,
# install the project when pyproject.toml changed, and fetch the broker/Redis binaries and Kafka
# connector jars (personalize/bootstrap.py). A warm run of the bootstrap takes about a second.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
# sha256 of the pyproject.toml last installed into the venv; a different hash means reinstall.
STAMP := $(VENV)/.pyproject.sha256
IS_PY311 := import sys; sys.exit(sys.version_info[:2] != (3, 11))
PYTEST_ARGS ?=
BOOTSTRAP_ARGS ?=

.PHONY: venv bootstrap test test-faults demo lint clean-stack vendor-uplot

venv:
	@if ! $(PY) -c '$(IS_PY311)' 2>/dev/null; then \
	  py=$$(command -v python3.11 || command -v python3 || true); \
	  if [ -z "$$py" ] || ! "$$py" -c '$(IS_PY311)' 2>/dev/null; then \
	    found=$${py:+$$("$$py" --version 2>&1 || true) at $$py}; \
	    echo "error: Python 3.11 is required (apache-flink 2.0.2 has no wheels for newer Pythons);" \
	      "found: $${found:-no python3.11 or python3 on PATH}" >&2; \
	    exit 1; \
	  fi; \
	  echo "creating $(VENV) with $$py ($$("$$py" --version 2>&1))"; \
	  rm -rf $(VENV); \
	  "$$py" -m venv $(VENV); \
	fi
	@want=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ "$$want" != "$$(cat $(STAMP) 2>/dev/null)" ]; then \
	  echo "installing the project into $(VENV) (pyproject.toml changed since the last install)"; \
	  $(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'; \
	  echo "$$want" > $(STAMP); \
	fi

bootstrap: venv
	@command -v java >/dev/null || { \
	  echo "error: java not found on PATH; Flink needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)" >&2; \
	  exit 1; }
	@$(PY) -m personalize.bootstrap $(BOOTSTRAP_ARGS)

# The suite's browser and kcat tests need Debian's Chromium and kcat; the bootstrap installs them with apt.
test: BOOTSTRAP_ARGS = --test-tools
test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -m "not fault_extra" $(PYTEST_ARGS)

# Every fault test, with the one `make test` leaves out for time: both TaskManagers lost in one recovery
# (docs/operations.md).
test-faults: bootstrap
	$(PY) -m pytest -q tests/test_faults.py $(PYTEST_ARGS)

demo: bootstrap
	$(VENV)/bin/personalize demo

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

clean-stack: venv
	$(VENV)/bin/personalize stack down

# The dashboard's charting library, committed under personalize/dashboard/static/vendor/uplot/ (the page works
# offline): re-fetch the pinned version with npm and check it and the committed files against sha256sums.
# `make vendor-uplot UPLOT=1.6.33` moves the pin instead (review the diff).
vendor-uplot: venv
	$(PY) -m personalize.dashboard.vendor $(if $(UPLOT),--update $(UPLOT))
