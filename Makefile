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

test: browser-notice lint browser sam-build asl-tools
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

# Mutation testing of the modules that hold fanout's guarantees (docs/testing.md); slow, so
# not part of `make test`. mutmut runs on a copy with the package at src/fanout, made and
# scored by tests/mutation_scope.py; its config is [tool.mutmut] in pyproject.toml.
.PHONY: mutation
# Four children on two cores: a mutant's tests mostly wait on the emulated AWS (measured
# 20-45% of a core each), so two children left the machine half idle.
mutation: $(STAMP)
	$(BIN)/python tests/mutation_scope.py stage build/mutation
	cd build/mutation && nice -n 15 $(CURDIR)/$(BIN)/mutmut run --max-children 4 > mutmut.log 2>&1 \
		|| { tail -c 3000 mutmut.log; exit 1; }
	$(BIN)/python tests/mutation_scope.py score build/mutation

clean:
	rm -rf $(VENV) $(SAM_VENV) build .aws-sam .pytest_cache .mypy_cache .ruff_cache

# `sam build` with aws-sam-cli from PyPI, in its own venv (its pins differ from moto's), then
# every handler imported from its artifact alone, on the runtime's Python (python3.X must be
# on PATH), and numpy from the worker artifacts.
SAM_VENV ?= .venv-sam
SAM_CLI_VERSION := 1.170.0
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
# python3.X of the runtime: on PATH, or a pyenv version that is installed but not selected.
LAMBDA_PYTHON_BIN ?= $(shell for p in python$(LAMBDA_PYTHON) \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(LAMBDA_PYTHON).*/bin/python$(LAMBDA_PYTHON) 2>/dev/null); \
	do $$p -c '' 2>/dev/null && { echo $$p; break; }; done)

$(SAM_VENV)/.installed-$(SAM_CLI_VERSION):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet aws-sam-cli==$(SAM_CLI_VERSION)
	touch $@

.PHONY: sam-build
sam-build: $(SAM_VENV)/.installed-$(SAM_CLI_VERSION)
	@[ -n "$(LAMBDA_PYTHON_BIN)" ] || { echo "sam-build: python$(LAMBDA_PYTHON) (the template's PythonRuntime) is not installed here; install it (or set LAMBDA_PYTHON_BIN) to check the artifacts"; exit 1; }
	$(SAM) build --build-in-source
	@for fn in WorkerFunction FinalizeFunction PlanFunction; do \
		$(LAMBDA_PYTHON_BIN) -I -S tests/lambda_artifact.py .aws-sam/build/$$fn \
			functions/$$(echo $$fn | sed 's/Function$$//' | tr A-Z a-z)/app.handler \
			numpy fanout.backends.aws.backend || exit 1; \
	done
	$(LAMBDA_PYTHON_BIN) -I -S tests/lambda_artifact.py .aws-sam/build/ApiFunction functions/api/app.app

# AWS's States Language tooling from npm (amazon-states-language-service, asl-validator),
# installed into build/asl for tests/test_template.py.
ASL_TOOLS := build/asl
ASL_PACKAGES := asl-validator@4.0.0 amazon-states-language-service@1.16.1 \
	vscode-languageserver-textdocument@1.0.16

$(ASL_TOOLS)/.installed:
	@command -v npm >/dev/null || { echo "asl-tools: npm is missing; install Debian's nodejs and npm packages"; exit 1; }
	mkdir -p $(ASL_TOOLS)
	npm install --silent --no-save --no-package-lock --no-audit --no-fund --prefix $(ASL_TOOLS) $(ASL_PACKAGES)
	touch $@

.PHONY: asl-tools
asl-tools: $(ASL_TOOLS)/.installed

# Used by `sam build` (template.yaml: Metadata BuildMethod: makefile; samconfig.toml builds
# in source, so SAM does not copy .venv). SAM sets ARTIFACTS_DIR. Every artifact is built for
# Lambda's platform and the template's PythonRuntime whatever this machine is: pip installs
# only manylinux2014_x86_64 wheels for that Python (LAMBDA_PYTHON, default: the template's
# PythonRuntime default), without bytecode. Workers (worker, finalize, plan) get
# worker-requirements.txt, exactly what the Batch image (Dockerfile) installs.
LAMBDA_PYTHON ?= $(shell sed -n '/^  PythonRuntime:/,/Default:/s/.*Default: python//p' template.yaml)
LAMBDA_PLATFORM := manylinux2014_x86_64
# Lambda's limit is 250 MB unzipped (code and layers); refuse well before it.
LAMBDA_MAX_MB ?= 200
WHEELS = build/lambda-wheels/$(notdir $(ARTIFACTS_DIR))
LAMBDA_PIP = $(PYTHON) -m pip install --quiet --no-compile --disable-pip-version-check \
	--platform $(LAMBDA_PLATFORM) --implementation cp --python-version $(LAMBDA_PYTHON) \
	--only-binary=:all: --target "$(ARTIFACTS_DIR)"

.PHONY: build-WorkerFunction build-FinalizeFunction build-PlanFunction build-ApiFunction \
	lambda-wheel

# fanout itself is pure Python: a wheel (one folder per function: SAM builds in parallel).
# Built from a private copy of the sources: setuptools writes into the source tree, and
# SAM runs the four builds at once.
lambda-wheel:
	@rm -rf $(WHEELS) && mkdir -p $(WHEELS)/src
	cp -r pyproject.toml README.md client $(WHEELS)/src/
	$(PYTHON) -m pip wheel --quiet --no-deps --disable-pip-version-check -w $(WHEELS) $(WHEELS)/src
	rm -rf $(WHEELS)/src

build-WorkerFunction build-FinalizeFunction build-PlanFunction: lambda-wheel
	$(LAMBDA_PIP) "$$(ls $(WHEELS)/*.whl)[aws]" -r worker-requirements.txt
	@$(MAKE) --no-print-directory lambda-artifact

build-ApiFunction: lambda-wheel
	$(LAMBDA_PIP) "$$(ls $(WHEELS)/*.whl)[aws,web]"
	@$(MAKE) --no-print-directory lambda-artifact

# The handlers, the build record; no tests, docs, emulator, CLI-only parts or bytecode;
# the size printed, and refused if the requirements would not fit Lambda.
.PHONY: lambda-artifact
lambda-artifact:
	mkdir -p "$(ARTIFACTS_DIR)/functions"
	cp -r functions/worker functions/finalize functions/plan functions/api "$(ARTIFACTS_DIR)/functions/"
	cd "$(ARTIFACTS_DIR)" && rm -rf fanout/testing fanout/demo.py fanout/cli.py bin \
		&& find . -name __pycache__ -type d -prune -exec rm -rf {} + \
		&& find . \( -name '*.pyc' -o -name '*.pyi' \) -delete \
		&& find . -path '*/tests' -type d -prune -exec rm -rf {} +
	$(PYTHON) client/backends/aws/build_info.py "$(ARTIFACTS_DIR)" $(LAMBDA_PYTHON) worker-requirements.txt pyproject.toml >/dev/null
	@size=$$(du -sm "$(ARTIFACTS_DIR)" | cut -f1); \
	echo "lambda artifact $$(basename "$(ARTIFACTS_DIR)"): $$size MB unzipped (python$(LAMBDA_PYTHON), $(LAMBDA_PLATFORM))"; \
	if [ "$$size" -gt $(LAMBDA_MAX_MB) ]; then \
		echo "$$(basename "$(ARTIFACTS_DIR)") is $$size MB unzipped: Lambda allows 250 MB (code and layers) and fanout refuses above $(LAMBDA_MAX_MB) MB. Trim worker-requirements.txt (every worker function installs it), or keep large libraries for tasks on tier='batch' in a Batch image of your own."; \
		exit 1; \
	fi
