#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a device (see docs/benchmarks.md):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 bitsandbytes==0.50.2 pydantic==2.14.4 \
#     pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 toml==0.10.2 \
#     importlib_metadata typing_extensions==4.16.0     (the device image has torch, transformers, peft…)
#   cp ../shared/bench/ref_train_bench.py bench/_ref/      (bench/_ref is git-ignored; carry it)
# then run `bash bench/gpu_check.sh [part…]` with carry [".whl", "bench/_ref"] and a timeout that leaves
# room for a rerun. Parts, in the order given (default: run graphs check nhwc): each writes its log to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; git rev-parse HEAD 2>/dev/null; date -u;
  python3 -c "import torch, diffusers, transformers, bitsandbytes, peft; print(torch.__version__, diffusers.__version__, transformers.__version__, bitsandbytes.__version__, peft.__version__)"; } 2>&1 | tee "$OUT/gpu.txt"
parts=${*:-run graphs check nhwc}
for part in $parts; do
  case $part in
  graphs)   # every issue-9 config, reference vs the trainer with captured steps (no compile wait)
    timeout 210 python3 bench/train_bench.py --cuda-graphs on --compile off --rounds 1 --steps 20 2>&1 | tee "$OUT/bench_graphs.log" ;;
  check)    # correctness: eager vs captured, same seed, 12 steps (loss curve + LoRA weights)
    timeout 60 python3 bench/graph_check.py --config sd15-lora-b4 --steps 12 --no-compile 2>&1 | tee "$OUT/graph_check.log" ;;
  run)      # a whole training run on CUDA through the CLI (loader, async loss reads, graphs, compile auto)
    timeout 120 python3 -m pytest -q -x -p no:cacheprovider \
      "tests/test_train_run.py::test_demo_folder_trains_two_epochs_into_files_diffusers_loads" 2>&1 | tail -30 | tee "$OUT/run_test.log" ;;
  eager)    # the trainer without capture: what the graphs add
    timeout 60 python3 bench/train_bench.py --cuda-graphs off --compile off --rounds 1 --steps 20 \
      --only sd15-lora-b1,sd15-lora-b8 2>&1 | tee "$OUT/bench_eager.log" ;;
  graphs-only) # the trainer side alone (the reference's figures from an earlier call of the same session)
    timeout 150 python3 bench/train_bench.py --cuda-graphs on --compile off --rounds 1 --steps 20 --no-ref 2>&1 | tee "$OUT/bench_graphs_only.log" ;;
  nhwc)     # captured + channels-last U-Net + cudnn.benchmark
    timeout 180 python3 bench/train_bench.py --cuda-graphs on --compile off --rounds 1 --steps 20 --no-ref \
      --channels-last --cudnn-benchmark --only sd15-lora-b1,sd15-lora-b8,sdxl-lora-b1,sd15-full-b4-adamw8 2>&1 | tee "$OUT/bench_nhwc.log" ;;
  compiled-only)
    timeout 200 python3 bench/train_bench.py --cuda-graphs on --compile on --rounds 1 --steps 20 --no-ref \
      --only sd15-lora-b1,sd15-lora-b8,sdxl-lora-b1 2>&1 | tee "$OUT/bench_compiled_only.log" ;;
  compiled) # captured + compiled
    timeout 240 python3 bench/train_bench.py --cuda-graphs on --compile on --rounds 1 --steps 20 \
      --only sd15-lora-b1,sd15-lora-b8,sdxl-lora-b1 2>&1 | tee "$OUT/bench_compiled.log" ;;
  check-compiled)
    timeout 200 python3 bench/graph_check.py --config sd15-lora-b4 --steps 12 2>&1 | tee "$OUT/graph_check_compiled.log" ;;
  esac
done
