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
CHECKOV_VENV ?= .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
# The Azure emulators (Azurite, a Cosmos DB server): npm packages pinned by tools/emulators/package-lock.json.
EMULATORS := tools/emulators
NODE_STAMP := $(EMULATORS)/node_modules/.installed-$(shell cat $(EMULATORS)/package-lock.json 2>/dev/null | sha1sum | cut -c1-12)
# llama-cpp-python is compiled by scripts/llama-wheel.sh with portable CPU flags (AVX2 on x86-64, armv8-a on
# arm64; never the build machine's own CPU flags) into a folder keyed by version, architecture, Python and flags, outside
# pip's cache, so a wheel built with other flags is never picked up. Shared by every clone of the project.
LLAMA_CPP_VERSION := 0.3.36
WHEEL_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/textnlp/wheels
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt scripts/llama-wheel.sh 2>/dev/null | sha1sum | cut -c1-12)

# Azurite and the Cosmos DB server, from npm (node and npm come with the machine image; ~20-30 s, once).
$(NODE_STAMP): $(EMULATORS)/package-lock.json
	rm -rf $(EMULATORS)/node_modules
	npm ci --prefix $(EMULATORS) --no-audit --no-fund --loglevel=error
	touch $@

emulators: $(NODE_STAMP)

.PHONY: emulators install serve quickstart test unit lint typecheck contracts security coverage bench clean infra sam-check llama-wheel checkov

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing (the first time, llama-cpp-python is compiled with portable flags: ~8 min on 2 cores; kept in $(WHEEL_DIR))"
	wheel=$$(PYTHON=$(BIN)/python LLAMA_CPP_VERSION=$(LLAMA_CPP_VERSION) WHEEL_DIR=$(WHEEL_DIR) scripts/llama-wheel.sh) && \
	  $(BIN)/python -m pip install --quiet --no-deps --force-reinstall "$$wheel" && \
	  $(BIN)/python -m pip install --quiet --no-deps -r requirements/no-deps.txt && \
	  $(BIN)/python -m pip install --quiet -e '.[local,dev,aws,gcp,azure,infra]' "$$wheel"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The SAM CLI pins many dependencies: it lives in its own venv (sam local needs Docker; validate/build do not).
$(SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet aws-sam-cli

# checkov (terraform/gcp, terraform/azure) pins many dependencies too: its own venv, made on first use (~30-60 s, once).
$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==3.3.30

checkov: $(STAMP) $(CHECKOV)
	$(BIN)/pytest -q tests/infra/test_terraform_gcp.py tests/infra/test_terraform_azure.py

sam-check: $(STAMP) $(SAM)
	SAM_CLI_TELEMETRY=0 $(SAM) validate --lint --region us-east-1
	$(BIN)/pytest -q tests/infra/test_sam.py tests/infra/test_sam_parity.py tests/infra/test_cfn_lint.py

infra: $(STAMP) $(SAM)
	$(BIN)/pytest -q -m infra tests/infra

# CLOUD=local (default): the local runtime. CLOUD=aws: the Lambda handler behind a local API Gateway HTTP API,
# on moto (WORKERS containers, 4 if unset). CLOUD=gcp: the api function under functions-framework on the Firestore
# and Cloud Storage emulators. CLOUD=azure: the function app behind a local stand-in of the Functions host, on the
# Cosmos DB server and Azurite (npm, installed once). An unknown CLOUD stops here, before anything is installed.
CLOUD ?= local
CLOUDS := local aws gcp azure
ifneq ($(filter serve,$(MAKECMDGOALS)),)
ifneq ($(filter $(CLOUDS),$(CLOUD)),$(CLOUD))
$(error unknown CLOUD=$(CLOUD); clouds: $(CLOUDS))
endif
endif

ifeq ($(CLOUD),azure)
serve: $(NODE_STAMP)
endif
serve: $(STAMP)
ifeq ($(CLOUD),aws)
	$(BIN)/python -m functions.aws.local --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)
else ifeq ($(CLOUD),gcp)
	$(BIN)/python -m functions.gcp.local --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)
else ifeq ($(CLOUD),azure)
	$(BIN)/python -m functions.azure.local --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)
else
	$(BIN)/textnlp --data-dir $(DATA_DIR) serve --host $(HOST) --port $(PORT) --workers $(WORKERS)
endif

# A demo tenant and key for the server of DATA_DIR, and a curl line and an openai snippet that work as printed.
quickstart: $(STAMP)
	$(BIN)/textnlp --data-dir $(DATA_DIR) quickstart --host $(HOST) --port $(PORT)

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

coverage: $(STAMP) $(SAM) $(CHECKOV) $(NODE_STAMP)
	$(BIN)/pytest -q --cov --cov-report=term

test: lint typecheck contracts security coverage

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build *.egg-info
