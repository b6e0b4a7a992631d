# Everything installs into .venv from nothing: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := api mpc protocol wire servers clients ops flower bench tests scripts examples

.PHONY: venv demo up test lint typecheck bench bench-quick protos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# CrypTen's metadata names packages it does not use (sklearn, torchvision, ...).
	$(BIN)/pip install --quiet --no-deps crypten==0.4.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mpcagg demo

up: $(STAMP)
	$(BIN)/mpcagg up

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/python scripts/typecheck.py

test: lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench --micro --keep-connections

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick --keep-connections

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
