"""Utilities ▸ Verify LoRA: check a LoRA file against a base model and show the verdict in the page.

The check loads the base model (torch), so it runs as `python -m trainer verify LORA --base MODEL --json`
in a child process; the GUI only reads the JSON report (fields: `trainer/networks/checks.py`).
Exit status 0 = fits, 1 = problems, 2 = a file could not be read.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import gradio as gr

from .. import modelinfo
from ..context import AppContext
from ..demo import demo_dir
from ..picker import PathRefused, confine
from .picker_panel import PickerPanel

VERIFY_TIMEOUT = 600
LORA_SUFFIXES = (".safetensors", ".pt")
FAMILY_CHOICES = [("Detect from the base model", ""),
                  *((name, key) for key, name in modelinfo.FAMILY_NAMES.items())]
PART_NAMES = {"te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2", "unet": "U-Net"}


# ---- choices ---------------------------------------------------------------------------------------
def output_folders(ctx: AppContext) -> list[Path]:
    """Where trained LoRAs land: the default output_dir, the demo's outputs, and finished jobs' folders."""
    folders = [Path(d) for d in (ctx.settings.defaults_for("lora").get("output_dir"),) if d]
    folders.append(demo_dir(ctx.settings.workspace) / "outputs")
    for job in ctx.queue.snapshot():
        folders += [Path(p).parent for p in job.outputs]
    return list(dict.fromkeys(folders))


def lora_choices(ctx: AppContext) -> list[str]:
    """LoRA files in models/lora/ and in the output folders (newest first within each folder)."""
    found: list[str] = []
    for folder in [ctx.settings.models_dir / "lora", *output_folders(ctx)]:
        if not folder.is_dir():
            continue
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LORA_SUFFIXES
                 and not p.name.startswith(".")]
        found += [str(p) for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]
    return list(dict.fromkeys(found))


def model_choices(ctx: AppContext) -> list[str]:
    """The training tabs' base-model suggestions: models/checkpoints/* then the known hub ids."""
    return modelinfo.list_models(ctx.settings.models_dir) + modelinfo.HUB_MODELS


# ---- command and report ------------------------------------------------------------------------------
def verify_argv(python: str, lora: str, base: str, family: str = "") -> list[str]:
    argv = [python, "-m", "trainer", "verify", str(lora), "--base", str(base), "--json"]
    return argv + (["--family", family] if family else [])


def _md(text) -> str:
    """Escape Markdown so module names like lora_unet_x_y show as written."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", str(text))


def _looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith(("/", ".", "~")) and not Path(text).exists()


def resolve_inputs(lora: str, base: str, roots: list[Path]) -> tuple[Path, str]:
    """The LoRA file and base model as the trainer should get them; ValueError says what to fix."""
    lora, base = str(lora or "").strip(), str(base or "").strip()
    if not lora:
        raise ValueError("Choose a LoRA file first (📂 or pick one from the list).")
    if not base:
        raise ValueError("Choose the base model the LoRA is meant for (a file in models/checkpoints/, a "
                         "diffusers folder or a hub id).")
    lora_path = confine(lora, roots)
    if not lora_path.is_file():
        raise ValueError(f"LoRA file '{lora}' does not exist" + (" (it is a folder)." if lora_path.is_dir()
                                                                 else "; check the path or pick it with 📂."))
    if _looks_like_hub_id(base):
        return lora_path, base
    base_path = confine(base, roots)
    if not base_path.exists():
        raise ValueError(f"Base model '{base}' does not exist; pick a file from models/checkpoints/ or a "
                         "diffusers folder.")
    return lora_path, str(base_path)


def format_report(report: dict) -> str:
    """The verdict as Markdown: ✔ with module counts per part, or every problem, plus warnings."""
    name = Path(report.get("path", "")).name
    family = modelinfo.FAMILY_NAMES.get(report.get("family"), report.get("family"))
    parts = report.get("modules_by_part") or {}
    counts = ", ".join(f"{PART_NAMES.get(k, k)}: {v}" for k, v in sorted(parts.items()))
    problems, warnings = report.get("problems") or [], report.get("warnings") or []
    if report.get("ok"):
        lines = [f"### ✔ OK — `{name}` fits the {family} base model",
                 f"{report.get('modules', 0)} LoRA modules ({counts or 'none'})."]
    else:
        lines = [f"### ✖ {len(problems)} problem(s) — `{name}` does not fit the {family} base model",
                 f"{report.get('modules', 0)} LoRA modules ({counts or 'none'}); file looks made for: "
                 f"{report.get('file_family') or 'unknown'}.", ""]
        lines += [f"- {_md(p)}" for p in problems]
    if warnings:
        lines += ["", "**Warnings**", *[f"- ⚠ {_md(w)}" for w in warnings]]
    return "\n".join(lines)


def _error_text(stderr: str, stdout: str) -> str:
    """The trainer's `error: …` line(s), else the last lines of its output (library noise skipped)."""
    lines = [ln for ln in (stderr or stdout or "").splitlines() if ln.strip()]
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln]
    return "\n".join(errors) if errors else "\n".join(lines[-8:]) or "no output"


def run_verify(python: str, roots: list[Path], lora: str, base: str, family: str = "", cwd=None,
               timeout: float = VERIFY_TIMEOUT) -> str:
    """Handler of the Verify button: check the inputs, run the trainer's check, return Markdown."""
    try:
        lora_path, base_arg = resolve_inputs(lora, base, roots)
    except (ValueError, PathRefused) as exc:
        return f"### ⛔ Not verified\n{_md(exc)}"
    argv = verify_argv(python, str(lora_path), base_arg, family or "")
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"### ⛔ Not verified\nThe check took longer than {timeout:.0f} s and was stopped."
    except OSError as exc:
        return f"### ⛔ Not verified\nCould not start `{_md(python)}`: {_md(exc)}"
    if proc.returncode in (0, 1):
        start = proc.stdout.find("{")
        try:
            return format_report(json.loads(proc.stdout[start:]))
        except ValueError:
            pass  # not the report: fall through and show what it printed
    why = "the LoRA file or the base model could not be read" if proc.returncode == 2 else "the check failed"
    return (f"### ⛔ Not verified: {why} (exit code {proc.returncode})\n"
            f"```\n{_error_text(proc.stderr, proc.stdout)}\n```")


# ---- layout ------------------------------------------------------------------------------------------
def render_verify(ctx: AppContext, picker: PickerPanel) -> None:
    """The Verify LoRA sub-tab; call inside the Utilities tab before `picker.wire()`."""
    roots, py, cwd = ctx.settings.allowed_roots, ctx.python, str(ctx.settings.project_root)
    gr.Markdown("Check a LoRA file against a base model: every key maps to a module of that model with the "
                "right shape (what A1111/ComfyUI report as *lora key not loaded*), values are finite, and the "
                "file is for this model family.")
    with gr.Row(equal_height=True):
        lora = gr.Dropdown(choices=lora_choices(ctx), value=None, allow_custom_value=True, scale=8,
                           label="LoRA file", info="models/lora/ and your output folders, or type a path",
                           elem_id="util-verify-lora")
        lora_pick = gr.Button("📂 Browse", scale=0, min_width=100, elem_id="util-verify-lora-pick")
        refresh = gr.Button("🔄 Refresh", scale=0, min_width=100, elem_id="util-verify-refresh")
    with gr.Row(equal_height=True):
        base = gr.Dropdown(choices=model_choices(ctx), value=None, allow_custom_value=True, scale=8,
                           label="Base model", info="models/checkpoints/, a diffusers folder or a hub id",
                           elem_id="util-verify-base")
        base_pick = gr.Button("📂 Browse", scale=0, min_width=100, elem_id="util-verify-base-pick")
        family = gr.Dropdown(choices=FAMILY_CHOICES, value="", label="Model family", scale=3,
                             info="only when detection from the base model is wrong",
                             elem_id="util-verify-family")
    button = gr.Button("Verify", variant="primary", elem_id="util-verify-run")
    result = gr.Markdown(elem_id="util-verify-result")
    # the panel's suffix filters are keyed by these names (LoRA weights, checkpoints)
    picker.attach(lora_pick, lora, "network_weights", "file", "the LoRA file")
    picker.attach(base_pick, base, "pretrained_model_name_or_path", "any", "the base model")

    def refreshed(current_lora, current_base):
        loras, models = lora_choices(ctx), model_choices(ctx)
        return (gr.update(choices=list(dict.fromkeys([*([current_lora] if current_lora else []), *loras]))),
                gr.update(choices=list(dict.fromkeys([*([current_base] if current_base else []), *models]))))

    refresh.click(refreshed, inputs=[lora, base], outputs=[lora, base], show_progress="hidden")
    button.click(lambda lo, ba, fa: run_verify(py, roots, lo, ba, fa, cwd=cwd), inputs=[lora, base, family],
                 outputs=result)
