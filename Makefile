# Two commands on a fresh machine:  make demo   and   make test   (make docs: the documentation site)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs install server-start server-stop serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools<81" wheel
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Smoke flow on the vendored tiny VOC data (embedded Prefect, no server).
demo: $(STAMP)
	PREFECT_HOME=$(CURDIR)/runs/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  $(BIN)/wsss run --config configs/voc-smoke.yaml

## The test suite (what CI runs).
test: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q tests

## The documentation site from docs/ into site/; strict: a broken link or a page missing from the nav fails
## (NO_MKDOCS_2_WARNING quiets Material's end-of-life banner).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

server-start: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/prefect-server.sh start

server-stop:
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/prefect-server.sh stop

serve: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_HOME=$(CURDIR)/runs/prefect $(BIN)/wsss serve

clean:
	rm -rf runs site
