# Two commands from a fresh clone: `make demo` and `make test`. Each creates .venv (with
# the machine's python3, which must be 3.11 or newer) and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "fanout needs Python >= 3.11; run: make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fanout demo

test: lint browser
	$(BIN)/python -m pytest

# mypy cannot see through the editable install's hook that maps `fanout` to client/;
# build/typing/fanout gives it the same mapping as a symlink.
lint: $(STAMP)
	@mkdir -p build/typing && ln -sfn ../../client build/typing/fanout
	$(BIN)/ruff check .
	$(BIN)/mypy

# Debian's chromium and chromedriver, for the dashboard's browser test
# (tests/test_dashboard_browser.py): installed with apt-get when either is missing.
.PHONY: browser
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	help="install Debian's chromium and chromium-driver packages, then run make again"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: /usr/bin/chromium or /usr/bin/chromedriver is missing and there is no apt-get: $$help"; \
		exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	else \
		echo "make browser: /usr/bin/chromium or /usr/bin/chromedriver is missing and installing needs root (no sudo here): as root run 'apt-get update && apt-get install -y chromium chromium-driver'"; \
		exit 1; \
	fi; \
	echo "make browser: installing chromium and chromium-driver (for the dashboard's browser test)"; \
	{ $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; } || \
		{ echo "make browser: apt-get could not install chromium and chromium-driver: $$help"; exit 1; }; \
	if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then \
		echo "make browser: installed, but /usr/bin/chromium or /usr/bin/chromedriver is still missing: $$help"; \
		exit 1; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Mutation testing of the modules that hold fanout's guarantees (docs/testing.md); slow, so
# not part of `make test`. mutmut runs on a copy with the package at src/fanout, made and
# scored by tests/mutation_scope.py; its config is [tool.mutmut] in pyproject.toml.
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/python tests/mutation_scope.py stage build/mutation
	cd build/mutation && nice -n 15 $(CURDIR)/$(BIN)/mutmut run --max-children 2 > mutmut.log 2>&1 \
		|| { tail -c 3000 mutmut.log; exit 1; }
	$(BIN)/python tests/mutation_scope.py score build/mutation

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

# Used by `sam build` (template.yaml: Metadata BuildMethod: makefile). SAM runs these from a
# copy of the functions' CodeUri (the repository root) and sets ARTIFACTS_DIR. Run
# `sam build --use-container` when this machine's Python differs from PythonRuntime.
.PHONY: build-WorkerFunction build-FinalizeFunction

build-WorkerFunction:
	python -m pip install --no-cache-dir ".[aws]" -t "$(ARTIFACTS_DIR)"
	cp -r functions "$(ARTIFACTS_DIR)/"

build-FinalizeFunction:
	python -m pip install --no-cache-dir ".[aws]" -t "$(ARTIFACTS_DIR)"
	cp -r functions "$(ARTIFACTS_DIR)/"
