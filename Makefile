# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit integration bench clean prometheus-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## demo: embedded PostgreSQL + simulated provisioner + the real service, live terminal view.
demo: $(STAMP)
	$(BIN)/prebuildd demo

## test: lint, type-check, and the whole suite against a real PostgreSQL (and Prometheus).
test: lint typecheck prometheus-tools
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) prometheus-tools
	$(BIN)/pytest tests/integration tests/e2e

## prometheus-tools: `promtool` and `prometheus` for the operator-kit tests (rules unit tests,
## a real Prometheus scraping `prebuildd run`). Installed from Debian's `prometheus` package
## only when missing and only when we can (root + apt-get); the binaries are all we use, so a
## policy-rc.d that refuses service starts is in place during the install (removed after,
## unless it was already there). Where they cannot be had, those tests skip with the reason
## (and fail under CI=true).
PROM_APT  := DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600
POLICY_RC ?= /usr/sbin/policy-rc.d
prometheus-tools:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "prometheus-tools: promtool/prometheus missing and not installable here (needs root and apt-get)"; \
	  exit 0; \
	fi; \
	if [ ! -e $(POLICY_RC) ]; then \
	  printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC) && chmod 755 $(POLICY_RC); \
	  trap 'rm -f $(POLICY_RC)' EXIT; \
	fi; \
	echo "prometheus-tools: installing Debian's prometheus package (binaries only, no service)"; \
	$(PROM_APT) update >/dev/null && \
	$(PROM_APT) install -y --no-install-recommends prometheus >/dev/null

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
