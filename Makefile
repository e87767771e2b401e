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

# The dashboard's browser test needs Debian's chromium and chromium-driver; when they are
# missing, `make test` installs them (saying so first). `make test BROWSER=skip` runs
# everything else and reports the browser tests as skipped.
BROWSER     ?= install
CHROMIUM    ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

test: browser-notice lint browser
	FANOUT_BROWSER=$(BROWSER) $(BIN)/python -m pytest

# mypy cannot see through the editable install's hook that maps `fanout` to client/;
# build/typing/fanout gives it the same mapping as a symlink.
lint: $(STAMP)
	@mkdir -p build/typing && ln -sfn ../../client build/typing/fanout
	$(BIN)/ruff check .
	$(BIN)/mypy

# Said before anything is installed, so nobody is surprised by ~130 system packages.
.PHONY: browser-notice
browser-notice:
	@if [ "$(BROWSER)" = skip ]; then \
		echo "make test: BROWSER=skip: the dashboard's browser tests will be skipped"; \
	elif ! [ -x $(CHROMIUM) ] || ! [ -x $(CHROMEDRIVER) ]; then \
		echo "make test: $(CHROMIUM) or $(CHROMEDRIVER) is missing: after lint, this installs Debian's"; \
		echo "  chromium and chromium-driver with apt-get (about 130 system packages, needs root or"; \
		echo "  sudo) for the dashboard's browser test. To skip that test instead: make test BROWSER=skip"; \
	fi

# Debian's chromium and chromedriver, for the dashboard's browser test
# (tests/test_dashboard_browser.py): installed with apt-get when either is missing.
.PHONY: browser
browser:
	@if [ "$(BROWSER)" = skip ]; then exit 0; fi; \
	if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	help="install Debian's chromium and chromium-driver packages, then run make again"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: $(CHROMIUM) or $(CHROMEDRIVER) is missing and there is no apt-get: $$help"; \
		exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	else \
		echo "make browser: $(CHROMIUM) or $(CHROMEDRIVER) is missing and installing needs root (no sudo here): as root run 'apt-get update && apt-get install -y chromium chromium-driver'"; \
		exit 1; \
	fi; \
	echo "make browser: installing chromium and chromium-driver (for the dashboard's browser test)"; \
	{ $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; } || \
		{ echo "make browser: apt-get could not install chromium and chromium-driver: $$help"; exit 1; }; \
	if ! [ -x $(CHROMIUM) ] || ! [ -x $(CHROMEDRIVER) ]; then \
		echo "make browser: installed, but $(CHROMIUM) or $(CHROMEDRIVER) is still missing: $$help"; \
		exit 1; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/run.py

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
