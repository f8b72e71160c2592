"""LoRA ▸ LoRA tools: merge, SVD merge, resize, extract, merge LyCORIS, extract DyLoRA, show, convert —
each runs as `python -m trainer lora <tool> … --json` in a child process (the GUI never loads torch); the page
shows the tool's progress bar while it runs and its report when it ends.

The widgets are generated from the tools' option models (`trainer/tools/options.py`), the same
declarations the CLI is built from.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import gradio as gr

from trainer.tools.options import TOOLS, Widget, tool_argv, widgets

from ..context import AppContext
from ..picker import PathRefused, confine
from .picker_panel import PickerPanel

TOOL_TIMEOUT = 6 * 3600
_TQDM = re.compile(r"([\w .-]+?):\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")
PICKED = {"file": "file", "model": "any", "save": "any", "save_model": "any", "files": "file"}


# ---- values → command ----------------------------------------------------------------------------------
def _numbers(text: str, what: str) -> list[float]:
    parts = [p for p in re.split(r"[\s,;]+", str(text or "").strip()) if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what}: {text!r} must be numbers separated by spaces, e.g. 0.7 0.5") from None


def values_from_inputs(tool: str, raw: list, roots: list[Path] | None = None) -> dict:
    """The page's widget values → option values (None for empty); ValueError names the field to fix.
    Paths typed in the page must lie under the browsable folders (`roots`)."""
    out = {}
    for w, value in zip(widgets(TOOLS[tool].options), raw):
        if w.kind == "files":
            value = [ln.strip() for ln in str(value or "").splitlines() if ln.strip()]
            value = [str(_confined(v, roots, w.label)) for v in value] or None
        elif w.kind == "floats":
            value = _numbers(value, w.label) or None
        elif w.kind in ("int", "float"):
            value = None if value in (None, "") else (int(value) if w.kind == "int" else float(value))
        elif w.kind == "bool":
            value = bool(value)
        else:
            value = str(value or "").strip() or None
            if value and w.kind in PICKED and not _hub_id(value):
                value = str(_confined(value, roots, w.label))
        if value is None and w.required:
            raise ValueError(f"{w.label} is required: {w.help}")
        out[w.name] = value
    return out


def _hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith(("/", ".", "~")) and not Path(text).exists()


def _confined(path: str, roots, label: str) -> Path:
    if roots is None:
        return Path(path)
    try:
        return confine(path, roots)
    except PathRefused as exc:
        raise ValueError(f"{label}: {exc}") from None


def tool_command(python: str, tool: str, values: dict) -> list[str]:
    return [python, "-m", "trainer", "lora", *tool_argv(tool, values), "--json"]


# ---- running -------------------------------------------------------------------------------------------
def progress_line(stderr_tail: str) -> str:
    """The latest tqdm state in the child's stderr as "desc: 45% (120/264)"."""
    last = stderr_tail.replace("\r", "\n").splitlines()
    for line in reversed(last):
        m = _TQDM.search(line)
        if m:
            return f"{m[1].strip()}: {m[2]}% ({m[3]}/{m[4]})"
    return ""


def format_report(tool: str, stdout: str, stderr: str, code: int) -> str:
    start = stdout.find("{")
    data = None
    if start >= 0:
        try:
            data = json.loads(stdout[start:])
        except ValueError:
            data = None
    if code == 0 and data and "text" in data:
        lines = [f"### ✔ {TOOLS[tool].title} done", _md(data["text"])]
        lines += [f"- ⚠ {_md(w)}" for w in data.get("warnings") or []]
        if tool == "show":
            meta = (data.get("details") or {}).get("metadata") or {}
            lines += ["", "<details><summary>Metadata</summary>", "", "```json",
                      json.dumps(meta, indent=2, ensure_ascii=False)[:20000], "```", "</details>"]
        return "\n".join(lines)
    why = (data or {}).get("error") or _last_error(stderr) or "no output"
    return f"### ⛔ {TOOLS[tool].title} failed (exit code {code})\n```\n{why}\n```"


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if ln.startswith("error:")]
    return "\n".join(errors) if errors else "\n".join(lines[-8:])


def run_tool(python: str, tool: str, raw: list, roots=None, cwd=None):
    """Handler of a tool's Run button: yields Markdown (progress while running, then the report)."""
    try:
        values = values_from_inputs(tool, raw, roots)
    except ValueError as exc:
        yield f"### ⛔ Not started\n{_md(exc)}"
        return
    argv = tool_command(python, tool, values)
    yield f"⏳ starting `{TOOLS[tool].name}` …"
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                encoding="utf-8", errors="replace")
    except OSError as exc:
        yield f"### ⛔ Could not start `{_md(python)}`: {_md(exc)}"
        return
    out_chunks: list[str] = []
    err = {"text": ""}
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    shown = ""
    while True:
        chunk = proc.stderr.read(256)
        if not chunk:
            break
        err["text"] = (err["text"] + chunk)[-20000:]
        line = progress_line(err["text"][-2000:])
        if line and line != shown:
            shown = line
            yield f"⏳ {line}"
    code = proc.wait(timeout=TOOL_TIMEOUT)
    reader.join()
    yield format_report(tool, "".join(out_chunks), err["text"], code)


def _md(text) -> str:
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", str(text))


# ---- layout ------------------------------------------------------------------------------------------
def _widget(w: Widget, tool: str, picker: PickerPanel):
    eid = f"lora-tools-{tool}-{w.name}"
    info = w.help[:160]
    if w.kind == "bool":
        return gr.Checkbox(label=w.label, value=bool(w.default), info=info, elem_id=eid)
    if w.kind == "choice":
        return gr.Dropdown(choices=[("", "")] + [(str(c), c) for c in w.choices], value=w.default or "",
                           label=w.label, info=info, elem_id=eid)
    if w.kind in ("int", "float"):
        return gr.Number(label=w.label, value=w.default, precision=0 if w.kind == "int" else None, info=info,
                         elem_id=eid)
    lines = 3 if w.kind == "files" else 1
    placeholder = "one file per line" if w.kind == "files" else ("e.g. 1 0.5" if w.kind == "floats" else "")
    if w.kind not in PICKED:
        return gr.Textbox(label=w.label, value=w.default or "", info=info, lines=lines, placeholder=placeholder,
                          elem_id=eid)
    with gr.Row(equal_height=True):
        box = gr.Textbox(label=w.label + (" *" if w.required else ""), info=info, lines=lines, scale=8,
                         placeholder=placeholder, elem_id=eid)
        if w.kind != "files":  # a list is typed or pasted; one path boxes get the browser
            button = gr.Button("📂", scale=0, min_width=44, elem_id=eid + "-pick")
            picker.attach(button, box, f"lora_tools_{tool}_{w.name}", PICKED[w.kind], w.label)
    return box


def render_lora_tools(ctx: AppContext) -> None:
    """The LoRA tools sub-tab; call inside the LoRA tab."""
    py, roots, cwd = ctx.python, ctx.settings.allowed_roots, str(ctx.settings.project_root)
    picker = PickerPanel(roots, "lora-tools")
    gr.Markdown("Work on LoRA files after training: merge into a checkpoint or into one LoRA, SVD-merge LoRAs "
                "of any ranks, resize to a lower rank, extract a LoRA from a fine-tune, bake a LyCORIS file into "
                "a checkpoint, cut a DyLoRA to a rank, inspect a file, convert a model. Each tool runs in the background, never replaces a file unless *Overwrite* is ticked, "
                "checks what it wrote, and reports below. Same tools from a shell: "
                "`python -m trainer lora <tool> --help` (docs/lora_tools.md says which to use when).")
    for tool in TOOLS.values():
        with gr.Tab(tool.title, elem_id=f"lora-tools-{tool.name}"):
            gr.Markdown(f"*{tool.summary[:1].upper() + tool.summary[1:]}.*")
            inputs = [_widget(w, tool.name, picker) for w in widgets(tool.options)]
            button = gr.Button(f"Run {tool.title.lower()}", variant="primary", elem_id=f"lora-tools-{tool.name}-run")
            result = gr.Markdown(elem_id=f"lora-tools-{tool.name}-result")

            def handler(*raw, _tool=tool.name):
                yield from run_tool(py, _tool, list(raw), roots, cwd)

            button.click(handler, inputs=inputs, outputs=result)
    picker.wire()
