#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a device (see docs/benchmarks.md):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 bitsandbytes==0.50.2 peft==0.21.2
#   cp ../shared/bench/ref_train_bench.py bench/_ref/      (bench/_ref is git-ignored; carry it)
# then run it with carry [".whl", "bench/_ref"] and a timeout that leaves room for a rerun.
# Everything it measures lands in $OUT (JSON lines + logs) for docs/benchmarks.md.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"
# 1. eager trainer vs the reference, then the compiled trainer, SD1.5 b1/b4/b8 and SDXL b1
timeout 240 python3 bench/train_bench.py --compile off --rounds 2 --steps 20 2>&1 | tee "$OUT/bench_eager.log"
timeout 300 python3 bench/train_bench.py --compile on --rounds 2 --steps 20 2>&1 | tee "$OUT/bench_compiled.log"
# 2. the CUDA-only test paths: bf16/fp16 training, 8-bit AdamW on CUDA, a short real trainer run
timeout 120 python3 -m pytest -q -x tests/test_train_step.py tests/test_train_run.py 2>&1 | tail -5 | tee "$OUT/tests.log"
