# Every target creates .venv and installs into it when missing, so a fresh clone needs only
# `make test` or `make table1`. GPU users: install your CUDA build of torch==2.13.0 into .venv
# first (see README); pip then keeps it.
PY      ?= python3
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKERS ?= 2
BENCH   := runs/bench

.PHONY: venv test bench bench-pretrain bench-eval bench-vot clips clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The whole suite, in parallel over $(WORKERS) processes of one thread each.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -n $(WORKERS) -q tests

# Benchmarks: ratios measured side by side in one run; never timed tests.
bench: bench-pretrain bench-eval bench-vot

bench-pretrain: $(STAMP)
	$(PYTHON) -m reproduce.bench_pretrain --out $(BENCH)/pretrain.json

bench-eval: $(STAMP)
	$(PYTHON) -m reproduce.bench_eval --out $(BENCH)/eval.json

bench-vot: $(STAMP)
	$(PYTHON) -m reproduce.bench_vot --out $(BENCH)/vot.json

# Tiny real mp4 clips in the Kinetics-400 layout, for smoke runs.
clips: $(STAMP)
	$(PYTHON) data.py make-clips --out runs/k400_tiny

clean:
	rm -rf $(VENV) runs .pytest_cache
