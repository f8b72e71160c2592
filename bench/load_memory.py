"""Peak extra RAM while loading a full-size SD1.5-shaped single file (see docs/model_loading.md).

    .venv/bin/python bench/load_memory.py [--workdir DIR] [--keep]

1. Writes a random-weight fp16 checkpoint with exactly SD1.5's keys and shapes (~2.1 GB) in the
   original layout (``configs/models/sd15`` + the project's own saver), in a child process.
2. For each load dtype, starts a fresh child process that imports everything, reads its resident
   set (VmRSS), resets nothing else, calls ``load_base_model`` and then reads the peak (VmHWM from
   /proc/self/status — tracemalloc does not see tensor memory). "Extra" = peak − RSS before loading.
   The peak includes the page-cache pages of the memory-mapped file that are resident in the
   process, so it is an upper bound of what loading costs.
Needs the CLIP tokenizer offline (``pip install --no-deps open-clip-torch`` or a hub cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAKE = r"""
import sys, torch
from trainer.models.components import build_components_from_config
from trainer.models.registry import get_architecture
from trainer.models.saving import original_state_dict
from trainer.models.checkpoint_io import write_checkpoint
comps = build_components_from_config(get_architecture("sd15"), empty=True)   # meta tensors: shapes only
layout = original_state_dict(comps, family="sd1")
g = torch.Generator().manual_seed(0)
tensors = {k: (torch.randn(v.shape, generator=g) * 0.02).half() for k, v in layout.items()}
write_checkpoint(tensors, sys.argv[1], metadata={"modelspec.architecture": "stable-diffusion-v1"})
print(sum(t.numel() for t in tensors.values()))
"""

MEASURE = r"""
import json, sys, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from trainer.models import load_base_model
import diffusers, transformers, safetensors  # imported before the baseline is taken
from diffusers.loaders import single_file_utils
before = status("VmRSS")
base = load_base_model(sys.argv[1], dtype=sys.argv[2])
peak = status("VmHWM")
anon, file_backed = status("RssAnon"), status("RssFile")
params = sum(p.numel() * p.element_size() for m in (base.unet, base.vae, *base.text_encoders) for p in m.parameters())
print(json.dumps({"dtype": sys.argv[2], "rss_before": before, "peak": peak, "extra": peak - before,
                  "model_bytes": params, "anon_after": anon, "file_after": file_backed, "source": base.source}))
"""


def run(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sd15-bench-"))
    ckpt = workdir / "sd15-shaped-random.safetensors"
    if not ckpt.exists():
        print(f"writing {ckpt} ...", flush=True)
        run(MAKE, str(ckpt))
    size = ckpt.stat().st_size
    gib = 1024 ** 3
    print(f"file: {size / gib:.2f} GiB")
    for dtype in ("fp16", "fp32"):
        r = json.loads(run(MEASURE, str(ckpt), dtype))
        print(f"load dtype={dtype}: RSS before {r['rss_before'] / gib:.2f} GiB, peak {r['peak'] / gib:.2f} GiB, "
              f"extra {r['extra'] / gib:.2f} GiB = {r['extra'] / size:.2f}x file; loaded model "
              f"{r['model_bytes'] / gib:.2f} GiB = {r['model_bytes'] / size:.2f}x file; "
              f"extra beyond the model {(r['extra'] - r['model_bytes']) / gib:+.2f} GiB; after loading: anonymous "
              f"{r['anon_after'] / gib:.2f} GiB, file-backed {r['file_after'] / gib:.2f} GiB")
    if not args.keep:
        ckpt.unlink()


if __name__ == "__main__":
    main()
