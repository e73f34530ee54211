# TextNLP: `make serve` runs the API locally, `make test` runs everything CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
HOST ?= 127.0.0.1
WORKERS ?= 1
DATA_DIR ?= .textnlp
SAM_VENV ?= .venv-sam
SAM := $(SAM_VENV)/bin/sam
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: install serve test unit lint typecheck contracts security coverage bench clean infra sam-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing (the first time, pip compiles llama-cpp-python: ~15 min on 2 cores; it is cached after)"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/no-deps.txt
	$(BIN)/python -m pip install --quiet -e '.[local,dev,aws,infra]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The SAM CLI pins many dependencies: it lives in its own venv (sam local needs Docker; validate/build do not).
$(SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet aws-sam-cli

sam-check: $(STAMP) $(SAM)
	SAM_CLI_TELEMETRY=0 $(SAM) validate --lint --region us-east-1
	$(BIN)/pytest -q tests/infra/test_sam.py tests/infra/test_sam_parity.py tests/infra/test_cfn_lint.py

infra: $(STAMP) $(SAM)
	$(BIN)/pytest -q -m infra tests/infra

serve: $(STAMP)
	$(BIN)/textnlp --data-dir $(DATA_DIR) serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy core adapters functions

contracts: $(STAMP)
	$(BIN)/lint-imports

security: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r core adapters functions

unit: $(STAMP)
	$(BIN)/pytest -q -m "not model and not e2e and not infra"

coverage: $(STAMP) $(SAM)
	$(BIN)/pytest -q --cov --cov-report=term

test: lint typecheck contracts security coverage

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build *.egg-info
