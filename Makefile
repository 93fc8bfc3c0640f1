# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit integration bench clean test-tools

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
test: lint typecheck test-tools
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) test-tools
	$(BIN)/pytest tests/integration tests/e2e

## test-tools: the external programs some tests run for real, installed from Debian's
## packages only when missing and only when we can (root + apt-get):
##   promtool, prometheus  (package prometheus): rules unit tests, a real Prometheus scraping
##                         `prebuildd run`; the binaries are all we use, so a policy-rc.d that
##                         refuses service starts is in place during the install (removed
##                         after, unless it was already there);
##   kubectl               (package kubernetes-client, when no kubectl is installed): builds the
##                         kustomizations;
##   libfaketime           (package libfaketime): a `prebuildd run` whose host clock is off.
## Where they cannot be had, the tests that need them fail with the reason (skip only with
## PREBUILDD_TEST_SKIP_TOOLS=1, never under CI=true).
TOOLS_APT := DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600
POLICY_RC ?= /usr/sbin/policy-rc.d
test-tools:
	@missing=""; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing="$$missing libfaketime"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "test-tools: missing$$missing and not installable here (needs root and apt-get)"; \
	  exit 0; \
	fi; \
	if [ ! -e $(POLICY_RC) ]; then \
	  printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC) && chmod 755 $(POLICY_RC); \
	  trap 'rm -f $(POLICY_RC)' EXIT; \
	fi; \
	echo "test-tools: installing Debian's$$missing (binaries only, no service)"; \
	$(TOOLS_APT) update >/dev/null && \
	$(TOOLS_APT) install -y --no-install-recommends $$missing >/dev/null

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
