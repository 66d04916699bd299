# mlops-lab: `make help` lists the targets. Everything installs into ./.venv (project) and ./.lab (emulator, state).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml localstack/requirements-ministack.txt | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.DEFAULT_GOAL := help
.PHONY: help install browser demo up down status test test-unit test-integration test-slow test-external lint format test-compose bench docs clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Python 3.11+ is needed, {sys.executable} is {sys.version.split()[0]}"'
	@echo "[1/3] Creating $(VENV)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@echo "[2/3] Installing the project and its test tools into $(VENV) (the first time: a few minutes, ~1 GB)..."
	@# One line a package as pip fetches it (progress without pip's full output); pip's own failure still fails make.
	set -o pipefail; $(BIN)/python -m pip install --disable-pip-version-check -e '.[test]' 2>&1 \
		| { grep --line-buffered -E '^(Collecting|Successfully installed|ERROR)' | cut -c1-110 || true; }
	@echo "[3/3] Installing the emulator (MiniStack) into its own venv..."
	$(BIN)/mlops-lab install-emulator
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) browser ## Create .venv, install the project and its test tools, and the emulator in its own venv

# The console's browser tests drive Debian's chromium (Playwright's own browser download is not used). Root installs
# it with apt-get (as `bench` does wrk); anyone else is told the command, and those tests skip (they fail under CI).
browser: ## Install Debian's chromium for the console's browser tests (apt-get, as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& echo "Installing Debian's chromium (browser tests)..." \
		&& { apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
			|| { apt-get update -qq && apt-get install -y --no-install-recommends chromium >/dev/null; }; }; } \
		|| echo "chromium is not installed: run 'sudo apt-get install chromium' for the console's browser tests."

demo: install ## Bring up the lab, run the whole pipeline on sample data, show the results; it stays up (make down)
	$(BIN)/mlops-lab demo

up: install ## Start the embedded stack (emulator + API), bootstrap, print endpoints
	$(BIN)/mlops-lab up

down: ## Stop the embedded stack
	@if [ -x $(BIN)/mlops-lab ]; then $(BIN)/mlops-lab down; else echo "Nothing installed, nothing running."; fi

status: install ## Show the embedded services and their health
	$(BIN)/mlops-lab status

# The lanes (tests/lanes.py declares each test's; docs/testing.md says what each costs). pytest caches the test modules
# it rewrites as bytecode: a shell that sets PYTHONDONTWRITEBYTECODE would make every run recompile ~300 modules (~5 s).
test test-unit test-integration test-slow test-external: export PYTHONDONTWRITEBYTECODE :=

test: install ## Run every lane: unit, integration and slow (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install ## Run the unit lane: no server (~40 s)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: install ## Run the integration lane: against an emulator stack the session starts
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

test-slow: install ## Run the slow lane: soak, crash, browser, CloudFormation deploy, external suite
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-external: install ## Run the pipeline suite against whatever endpoint the SDK resolves (AWS needs LAB_EXTERNAL_ALLOW_AWS=1)
	$(BIN)/python -m pytest tests/external $(PYTEST_ARGS)

lint: install ## Check style and common bugs (ruff lint + format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-compose: install ## Run the docker-compose stack end to end on a real engine (root; see scripts/compose-ci.sh)
	scripts/compose-ci.sh

bench: install ## Run the benchmarks: batch path, Batch Transform beside it, then the API against its baselines (tables, not assertions)
	$(BIN)/python bench/batch.py
	@if [ -e ../shared/data/course/model.onnx ]; then $(BIN)/python bench/batch.py --model course; \
		else echo "(no ../shared/data/course: the course-model batch bench is skipped)"; fi
	@# Batch Transform beside the Lambda path (issue 21): the course model at 1M rows + a 10M-row memory run; then the
	@# lab's heavier model, 1 vs 2 instances.
	@if [ -e ../shared/data/course/model.onnx ]; then $(BIN)/python bench/transform.py --model course; \
		else echo "(no ../shared/data/course: the course-model transform bench is skipped)"; fi
	$(BIN)/python bench/transform.py --model lab --rows 1000000 --big-rows 0 --rounds 3
	@# The API bench drives its servers with wrk (Debian package); root installs it, anyone else is told how.
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get install -y --no-install-recommends wrk >/dev/null; } || true
	$(BIN)/python bench/api.py --rounds 3

docs: $(STAMP) ## Rewrite docs/configuration.md from the settings (src/mlops_lab/settings.py)
	$(BIN)/python scripts/config_doc.py

clean: down ## Remove the venvs, state, builds and caches
	rm -rf $(VENV) .lab .pytest_cache build *.egg-info src/*.egg-info
