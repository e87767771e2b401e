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

test: lint
	$(BIN)/python -m pytest

# mypy cannot see through the editable install's hook that maps `fanout` to client/;
# build/typing/fanout gives it the same mapping as a symlink.
lint: $(STAMP)
	@mkdir -p build/typing && ln -sfn ../../client build/typing/fanout
	$(BIN)/ruff check .
	$(BIN)/mypy

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
