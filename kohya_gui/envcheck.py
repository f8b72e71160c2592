"""Environment check for the About tab.

`python -m kohya_gui.envcheck` prints one JSON object. The GUI runs it as a subprocess so that the
GUI process itself never imports torch (and a broken CUDA install cannot take the page down).
"""
from __future__ import annotations

import importlib
import json
import platform
import subprocess
import sys
import threading


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a library failing to initialise
        return f"not usable: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    return str(getattr(mod, "__version__", "installed"))


def gather() -> dict:
    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(),
                  "executable": sys.executable}
    try:
        import torch
        info["torch"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_version"] = torch.version.cuda
        gpus = []
        if info["cuda_available"]:
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append({"index": i, "name": props.name,
                             "vram_gb": round(props.total_memory / 1024**3, 1),
                             "bf16": bool(torch.cuda.is_bf16_supported()) if i == 0 else None})
        info["gpus"] = gpus
        mps = getattr(torch.backends, "mps", None)
        info["mps_available"] = bool(mps and mps.is_available())
    except Exception as exc:
        info["torch"] = f"not usable: {type(exc).__name__}: {exc}"[:200]
        info["gpus"] = []
    for module in ("bitsandbytes", "diffusers", "transformers", "accelerate", "safetensors"):
        info[module] = _version(module)
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception as exc:
        info["onnxruntime"] = f"not usable: {type(exc).__name__}: {exc}"[:200]
        info["onnxruntime_providers"] = []
    return info


def run_check(python: str = sys.executable, timeout: float = 180.0) -> dict:
    """Run the check in a fresh interpreter and return its JSON (or an `error` entry)."""
    try:
        proc = subprocess.run([python, "-m", "kohya_gui.envcheck"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"The environment check could not run: {exc}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"error": f"The environment check failed (exit code {proc.returncode}). {tail}"}
    return json.loads(lines[-1])


_cache: dict[str, dict] = {}
_lock = threading.Lock()


def cached_check(python: str = sys.executable, refresh: bool = False) -> dict:
    """run_check once per studio process and interpreter (it imports torch: seconds); refresh = run again."""
    with _lock:
        if refresh or python not in _cache:
            _cache[python] = run_check(python)
        return _cache[python]


def to_markdown(info: dict) -> str:
    if "error" in info:
        return f"**Environment check failed.** {info['error']}"
    gpus = info.get("gpus") or []
    if gpus:
        gpu_text = "; ".join(f"{g['name']} ({g['vram_gb']} GB)" for g in gpus)
    elif info.get("mps_available"):
        gpu_text = "Apple MPS"
    else:
        gpu_text = "none found — training runs on the CPU (fine for the Demo, slow for real models)"
    rows = [
        ("Python", info.get("python")),
        ("PyTorch", info.get("torch")),
        ("CUDA", (info.get("cuda_version") or "—") + (" (available)" if info.get("cuda_available")
                                                       else " (not available)")),
        ("GPU", gpu_text),
        ("bitsandbytes (8-bit optimizers)", info.get("bitsandbytes")),
        ("onnxruntime (WD14 tagger)", info.get("onnxruntime")),
        ("onnxruntime providers", ", ".join(info.get("onnxruntime_providers") or []) or "—"),
        ("diffusers", info.get("diffusers")),
        ("transformers", info.get("transformers")),
        ("accelerate", info.get("accelerate")),
    ]
    lines = ["| Component | Found |", "|---|---|"]
    lines += [f"| {name} | {value if value is not None else '—'} |" for name, value in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(gather()))
