# Every target creates .venv and installs into it when missing, so a fresh clone needs only
# `make test` or `make table1`. GPU users: install your CUDA build of torch==2.13.0 into .venv
# first (see README); pip then keeps it.
PY      ?= python3
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKERS ?= 2
BENCH   := runs/bench

.PHONY: venv test table1 figure-attention table2 table3 table4 figure-p table-correspondence table-tap table-flow table-3d bench bench-pretrain bench-eval bench-vot bench-tap bench-flow bench-3d bench-gpu backbones clips clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The whole suite, in parallel over $(WORKERS) processes of one thread each (a test file
# stays on one worker, so module fixtures such as the Table 1 smoke run are built once).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -n $(WORKERS) --dist loadfile -q tests

# Table 1 (reproduce/table1.py on reproduce/pipeline.py). No dataset paths: the tiny synthetic
# reproduction (17 min on 2 cores from a fresh clone, two rows at once: --jobs), SMOKE=1 for ~2 min; ARGS="--seeds 3" for mean ± std over
# seeds, ARGS=--verbose to stream every stage's output. Full scale: make table1 ARGS="--k400 ...
# --got10k ... --davis ... --ytvos ... --ckpt ROW=PATH" (NPROC / NNODES / NODE_RANK / MASTER_ADDR
# from the environment or the make command line).
table1: $(STAMP)
	$(PYTHON) -m reproduce.table1 $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

# The attention figure: within/between-frame decoder attention, TwinMAE vs DropMAE.
figure-attention: $(STAMP)
	$(PYTHON) -m reproduce.table1 --figure-attention $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

# The other tables and figures, each one reproduce/*.py on reproduce/pipeline.py, with the same
# SMOKE=1 / ARGS as table1 (paths, hardware and times: README "Reproducing the paper").
table2: $(STAMP)
	$(PYTHON) -m reproduce.table2 $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

table3: $(STAMP)
	$(PYTHON) -m reproduce.table3 $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

table4: $(STAMP)
	$(PYTHON) -m reproduce.table4 $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

figure-p: $(STAMP)
	$(PYTHON) -m reproduce.figure_p $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

table-correspondence: $(STAMP)
	$(PYTHON) -m reproduce.table_correspondence $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

# Tracking any point (tasks/tap.py): initialisation rows on TAP-Vid; tiny synthetic by default,
# SMOKE=1 for the test suite's scale; full scale: ARGS="--kubric ... --tapvid-davis ..." (README).
table-tap: $(STAMP)
	$(PYTHON) -m reproduce.table_tap $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

# Benchmarks: ratios measured side by side in one run; never timed tests. QUICK=1: the short
# variant of bench-pretrain (the full one: 5:42 on an idle 2-core machine, 2026-12-02); CPU_TIME=1 times it in CPU
# seconds of one thread (for a shared machine; run it with OMP_NUM_THREADS=1). bench-flow and bench-3d (ViT-B
# on a CPU: long) and bench-gpu (CUDA only) run on their own.
bench: bench-pretrain bench-eval bench-vot bench-tap

bench-pretrain: $(STAMP)
	$(PYTHON) -m reproduce.bench_pretrain $(if $(filter 1,$(QUICK)),--quick) $(if $(filter 1,$(CPU_TIME)),--cpu-time) --out $(BENCH)/pretrain.json

# On a CUDA machine only (refuses elsewhere, exit status 2): pre-training at batch 64 bf16, MFU,
# ASAD overhead, SDPA backends, DropTrack / DropSeg speed, end to end. ARGS="--compile" etc.
bench-gpu: $(STAMP)
	$(PYTHON) -m reproduce.bench_gpu --out $(BENCH)/gpu.json $(ARGS)

bench-eval: $(STAMP)
	$(PYTHON) -m reproduce.bench_eval --out $(BENCH)/eval.json

bench-vot: $(STAMP)
	$(PYTHON) -m reproduce.bench_vot --out $(BENCH)/vot.json

bench-tap: $(STAMP)
	$(PYTHON) -m reproduce.bench_tap --out $(BENCH)/tap.json

# 3-D point-cloud tracking (reproduce/table_3d.py): tiny synthetic LiDAR scenes in the KITTI
# tracking layout by default, SMOKE=1 for the test suite's scale; full scale:
# make table-3d ARGS="--kitti /data/kitti/tracking/training --k400 ... --ckpt ROW=PATH"
table-3d: $(STAMP)
	$(PYTHON) -m reproduce.table_3d $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

bench-3d: $(STAMP)
	$(PYTHON) -m reproduce.bench_3d --out $(BENCH)/3d.json

# The shared tiny backbones of every table (image MAE, TwinMAE, DropMAE) pre-trained once into
# runs/backbones_tiny ahead of the tables (ARGS="--seeds 3" or "--scale smoke"); tables reuse them.
backbones: $(STAMP)
	$(PYTHON) -m reproduce.pipeline backbones $(ARGS)

# Tiny real mp4 clips in the Kinetics-400 layout (the backbones' pre-training and held-out clips).
clips: $(STAMP)
	$(PYTHON) -m reproduce.pipeline clips $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

# Optical flow (tasks/flow.py, our DropMAE-Flow design): the C+T table by initialisation, tiny
# synthetic scale by default (SMOKE=1: the test suite's scale); full scale with ARGS="--chairs
# ... --things ... --sintel ... --kitti ... --ckpt dropmae=PATH ...". bench-flow: base preset speed.
table-flow: $(STAMP)
	$(PYTHON) -m reproduce.table_flow $(if $(filter 1,$(SMOKE)),--smoke) $(ARGS)

bench-flow: $(STAMP)
	$(PYTHON) -m reproduce.bench_flow --out $(BENCH)/flow.json
