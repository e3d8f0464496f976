#!/usr/bin/env bash
# Every benchmark once, in sequence, on an otherwise idle machine; each appends its table to BENCHMARKS.md.
# Usage: benchmarks/run_all.sh   (or `make bench`); PY=path/to/python overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" benchmarks/bench_extract.py --workers 2 --min_seconds 30 --rounds 3
"$PY" benchmarks/bench_extract.py --workers 2 --min_seconds 30 --rounds 3 --ucf_like
"$PY" benchmarks/bench_extract.py --workers 2 --min_seconds 30 --rounds 3 --issue_mix
"$PY" benchmarks/bench_startup.py --repeats 5 --report BENCHMARKS.md
"$PY" benchmarks/bench_embed.py -nw 2
"$PY" benchmarks/bench_embed.py -nw 2 -m timm:vit_small_patch16_224 --weights none
"$PY" benchmarks/bench_backbones.py
"$PY" benchmarks/bench_memory.py
"$PY" benchmarks/bench_direct.py --demo_args "--groups 6 --clips 2 --test_groups 2"
"$PY" benchmarks/bench_train.py --num_batches 4
"$PY" benchmarks/bench_e2e.py --backbones resnet18 resnet50 --steps 2 --batch_size 8
