# Every target creates .venv and installs into it when missing, so a fresh clone needs only
# `make test` or `make table1`.
PY      ?= python3
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKERS ?= 2

.PHONY: test venv bench bench-pretrain bench-eval clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -n $(WORKERS) -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
