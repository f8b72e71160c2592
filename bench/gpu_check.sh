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
# In priority order (device time is short; each step writes its log to $OUT as it goes):
# 1. every issue-9 config, reference vs the trainer with captured steps (compile off: no compile wait)
timeout 300 python3 bench/train_bench.py --cuda-graphs on --compile off --rounds 1 --steps 20 2>&1 \
  | tee "$OUT/bench_graphs.log"
# 2. correctness: eager vs captured vs captured+compiled, same seed, 12 steps (loss curve + LoRA weights)
timeout 240 python3 bench/graph_check.py --config sd15-lora-b4 --steps 12 2>&1 | tee "$OUT/graph_check.log"
# 3. captured + compiled, the two LoRA headline configs
timeout 300 python3 bench/train_bench.py --cuda-graphs on --compile on --rounds 1 --steps 20 \
  --only sd15-lora-b1,sd15-lora-b8,sdxl-lora-b1 2>&1 | tee "$OUT/bench_graphs_compiled.log"
# 4. the CUDA paths of the tests: bf16/fp16, 8-bit AdamW, fp8_base, whole runs (async loss reads, graphs)
timeout 180 python3 -m pytest -q -x tests/test_train_step.py tests/test_train_fp8.py tests/test_train_run.py 2>&1 | tail -5 | tee "$OUT/tests.log"
