# Every target creates .venv and installs into it when missing, so a fresh clone needs only
# `make test` or `make table1`. GPU users: install your CUDA build of torch==2.13.0 into .venv
# first (see README); pip then keeps it.
PY      ?= python3
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKERS ?= 2
BENCH   := runs/bench

.PHONY: venv test table1 figure-attention bench bench-pretrain bench-eval bench-vot bench-gpu clips clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The whole suite, in parallel over $(WORKERS) processes of one thread each (a test file
# stays on one worker, so module fixtures such as the Table 1 smoke run are built once).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -n $(WORKERS) --dist loadfile -q tests

# Table 1. No dataset paths: the tiny synthetic reproduction (~15 min on 2 cores), SMOKE=1 for
# ~2 min. Full scale: make table1 ARGS="--k400 ... --got10k ... --davis ... --ytvos ... --ckpt ROW=PATH"
# (NPROC / NNODES / NODE_RANK / MASTER_ADDR from the environment or the make command line).
table1: $(STAMP)
	$(PYTHON) -m reproduce.table1 $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

# The attention figure: within/between-frame decoder attention, TwinMAE vs DropMAE.
figure-attention: $(STAMP)
	$(PYTHON) -m reproduce.table1 --figure-attention $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

# Benchmarks: ratios measured side by side in one run; never timed tests. QUICK=1: the short
# variant of bench-pretrain (~10 min on 2 cores instead of ~25).
bench: bench-pretrain bench-eval bench-vot

bench-pretrain: $(STAMP)
	$(PYTHON) -m reproduce.bench_pretrain $(if $(filter 1,$(QUICK)),--quick) --out $(BENCH)/pretrain.json

# On a CUDA machine only (refuses elsewhere, exit status 2): pre-training at batch 64 bf16, MFU,
# ASAD overhead, SDPA backends, DropTrack / DropSeg speed, end to end. ARGS="--compile" etc.
bench-gpu: $(STAMP)
	$(PYTHON) -m reproduce.bench_gpu --out $(BENCH)/gpu.json $(ARGS)

bench-eval: $(STAMP)
	$(PYTHON) -m reproduce.bench_eval --out $(BENCH)/eval.json

bench-vot: $(STAMP)
	$(PYTHON) -m reproduce.bench_vot --out $(BENCH)/vot.json

# Tiny real mp4 clips in the Kinetics-400 layout, for smoke runs.
clips: $(STAMP)
	$(PYTHON) data.py make-clips --out runs/k400_tiny

clean:
	rm -rf $(VENV) runs .pytest_cache
