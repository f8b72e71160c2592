"""Everything checked before Start: schema values, paths on disk, and the trainer's dataset preflight.

The preflight runs as `python -m trainer preflight CONFIG --json` in a subprocess (it reads images
with PIL and must not pull torch into the GUI process). Every problem ends up next to its field and
in the summary; Start is refused while any error remains.
"""
from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import CONFIG_TYPES, check_paths, looks_like_hub_id, save_config_json, validate_values
from trainer.problems import Problem

from . import modelcheck, vramcheck
from .picker import PathRefused, confine

PREFLIGHT_TIMEOUT = 300
PICKABLE = ("path", "dir", "file")
MODEL_FIELDS = ("pretrained_model_name_or_path", "vae")
DATASET_FIELDS = ("train_data_dir", "reg_data_dir", "dataset_config", "in_json")


@dataclass
class CheckResult:
    config: Any = None
    problems: list[Problem] = field(default_factory=list)
    plan: dict | None = None
    preflight_ran: bool = False
    preflight_note: str = ""
    vram: vramcheck.VramCheck | None = None  # the estimate against the card (with the preflight)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.errors


def empty_number_issues(specs, values: dict) -> list[Problem]:
    """Number boxes left empty where the option needs a number (clearer than pydantic's text)."""
    return [Problem.at(s.name, f"is empty; enter a number (default {s.default})")
            for s in specs if s.kind in ("int", "float") and not s.optional and values.get(s.name) is None]


def check_values(training_type: str, values: dict, specs) -> CheckResult:
    """Pure checks (no disk): what can be shown while the user types."""
    empties = empty_number_issues(specs, values)
    blanks = {i.field for i in empties}
    config, problems = validate_values(training_type, {k: v for k, v in values.items() if k not in blanks})
    issues = empties + [p for p in problems if p.field not in blanks]
    return CheckResult(config=None if empties else config, problems=issues)


def stand_in_config(training_type: str, values: dict, problems: list[Problem]):
    """The user's values with each rejected one left at its default, so the disk, model and dataset
    checks run in the same round as the value checks (one round of problems, not several)."""
    cls = CONFIG_TYPES[training_type]
    bad = {p.field for p in problems if p.level == "error"}
    good = {k: v for k, v in values.items() if k in cls.model_fields and k not in bad and v is not None}
    try:
        return cls(**good)
    except Exception:          # a rule inside the model itself: fall back to the value checks alone
        return None


def outside_roots_issues(config, specs, roots: list[Path] | None) -> list[Problem]:
    """Every path the run would read or write must lie under the folders the studio may use (the
    picker's rule), so a logged-in user cannot point the trainer at the rest of the server."""
    if not roots:
        return []
    issues = []
    for spec in specs:
        value = str(getattr(config, spec.name, "") or "").strip()
        if spec.kind not in PICKABLE or not value:
            continue
        if spec.name in MODEL_FIELDS and looks_like_hub_id(value) and not Path(value).exists():
            continue            # a hub id, not a path
        try:
            confine(value, roots)
        except PathRefused as exc:
            issues.append(Problem.at(spec.name, str(exc)))
    return issues


def model_issues(config, cwd: Path | None) -> list[Problem]:
    found = (modelcheck.model_problem(str(getattr(config, name, "") or ""), cwd=cwd, field=name)
             for name in MODEL_FIELDS)
    return [p for p in found if p]


def _merge(issues: list[Problem], more: list[Problem]) -> list[Problem]:
    """Add problems, dropping one that repeats a field+message already listed."""
    seen = {(i.field, i.message) for i in issues}
    return issues + [m for m in more if (m.field, m.message) not in seen]


def check_all(training_type: str, values: dict, specs, *, python: str, workspace: Path,
              cwd: Path | None = None, preflight: bool = True, roots: list[Path] | None = None) -> CheckResult:
    """Values, paths (on disk and inside the roots), the base model and the dataset preflight — all
    in one round: a value error does not hide a missing folder."""
    result = check_values(training_type, values, specs)
    config = result.config or stand_in_config(training_type, values, result.problems)
    if config is None:
        return result
    disk = list(check_paths(config))
    flagged = {p.field for p in disk}
    disk += [i for i in model_issues(config, cwd) if i.field not in flagged]
    disk += outside_roots_issues(config, specs, roots)
    result.problems = _merge(result.problems, disk)
    dataset_blocked = any(p.level == "error" and p.field in DATASET_FIELDS for p in result.problems)
    if preflight and not dataset_blocked:
        issues, plan, note = run_preflight(config, python=python, workspace=workspace, cwd=cwd)
        result.problems = _merge(result.problems, issues)
        result.preflight_ran, result.preflight_note = True, note
        result.plan = plan if result.config is not None else None   # a plan from stand-in values would mislead
        if result.config is not None:
            result.vram = vramcheck.check_vram(result.config, python)
            if result.vram is not None and result.vram.too_big:
                result.problems = _merge(result.problems, [Problem.at(
                    vramcheck.FIELD, f"the run's VRAM estimate ({result.vram.estimate_gb} GB, unmeasured) is above "
                    f"the card's {result.vram.card_gb:g} GB ({result.vram.card_source})", "warning",
                    "choose the VRAM preset of your card, or turn on fp8_base, cached text-encoder outputs, "
                    "gradient checkpointing or blocks_to_swap")])
    return result


# ---- the trainer's preflight ---------------------------------------------------------------------

def run_preflight(config, *, python: str, workspace: Path, cwd: Path | None = None,
                  timeout: float = PREFLIGHT_TIMEOUT) -> tuple[list[Problem], dict | None, str]:
    tmp_dir = Path(workspace) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_dir / f"preflight-{uuid.uuid4().hex[:8]}.json"
    save_config_json(config, cfg_path)
    try:
        proc = subprocess.run([python, "-m", "trainer", "preflight", str(cfg_path), "--json"],
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return [Problem.at("train_data_dir", f"the dataset check did not finish within {timeout:.0f} s",
                           "warning")], None, ""
    finally:
        cfg_path.unlink(missing_ok=True)
    report = _json_from(proc.stdout)
    if report is None:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:600]
        return [Problem.at("train_data_dir", f"the dataset check could not run (exit code {proc.returncode}): "
                           f"{tail or 'no output'}", "warning")], None, ""
    return parse_preflight(report, config)


def _json_from(stdout: str) -> dict | None:
    text = stdout.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        lines = [ln for ln in text.splitlines() if ln.lstrip().startswith("{")]
        try:
            data = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def _field_for(problem: dict, config) -> str:
    if problem.get("field"):
        return str(problem["field"])
    path = str(problem.get("path") or "")
    reg = str(getattr(config, "reg_data_dir", "") or "")
    if reg and path.startswith(reg):
        return "reg_data_dir"
    if getattr(config, "dataset_config", ""):
        return "dataset_config"
    return "train_data_dir"


def parse_preflight(report: dict, config) -> tuple[list[Problem], dict | None, str]:
    """The preflight JSON (trainer.data.preflight.PreflightReport.to_dict(), possibly wrapped) →
    issues attached to fields, the plan, and the report's own text."""
    if isinstance(report.get("preflight"), dict):
        report = {**report["preflight"], **{k: v for k, v in report.items() if k != "preflight"}}
    issues = []
    for key, default in (("problems", "error"), ("errors", "error"), ("bad_files", "skipped"),
                         ("warnings", "warning")):
        for raw in report.get(key) or []:
            raw = {"message": raw} if isinstance(raw, str) else raw
            if not isinstance(raw, dict):
                continue
            found = Problem.from_dict(raw, default)
            message = f"skipped: {found.message}" if found.level == "skipped" else found.message
            if found.path and found.path not in message:
                message = f"{found.path}: {message}"
            issues.append(Problem.at(_field_for(raw, config), message, "error" if found.is_error else "warning",
                                     found.hint))
    plan = report.get("plan") if isinstance(report.get("plan"), dict) else (
        report if "total_steps" in report else None)
    if plan is not None and "concepts" not in plan and report.get("concepts"):
        plan = {**plan, "concepts": report["concepts"]}
    return issues, plan, str(report.get("text") or "")


# ---- display -------------------------------------------------------------------------------------

def summary_markdown(result: CheckResult, labels: dict[str, str]) -> str:
    errors = result.errors
    warnings = [p for p in result.problems if p.level != "error"]
    lines: list[str] = []
    if errors:
        lines.append(f"### ⛔ {len(errors)} problem(s) to fix before training can start")
        lines += [_line(p, labels) for p in errors]
    elif result.config is not None:
        checked = "values, paths and dataset" if result.preflight_ran else "values and paths"
        lines.append(f"### ✅ Ready to train ({checked} checked)")
    if warnings:
        lines.append(f"**{len(warnings)} note(s):**")
        lines += [_line(p, labels) for p in warnings]
    return "\n".join(lines)


def _line(p: Problem, labels: dict[str, str]) -> str:
    name = labels.get(p.field, p.field)
    hint = ""
    if p.hint and p.hint not in p.message:
        first, _, rest = p.hint.partition("\n")
        hint = f"  \n  ↳ {first}"
        if rest.strip():   # e.g. the expected folder layout: keep its indentation
            hint += "\n\n  ```\n" + "\n".join(f"  {ln}" for ln in rest.splitlines()) + "\n  ```"
    return f"- **{name}** (`{p.field}`): {_plain(p.message)}{_plain(hint)}"


def _plain(text: str) -> str:
    """Angle brackets as text: '<repeats>_<name>' would otherwise vanish as an unknown HTML tag and
    cut the sentence; inside ``` blocks they are shown as they are."""
    if "```" in text:
        head, sep, rest = text.partition("```")
        return head.replace("<", "&lt;").replace(">", "&gt;") + sep + rest
    return text.replace("<", "&lt;").replace(">", "&gt;")


def repeats_text(plan: dict) -> str:
    """'10 repeats', or each concept's repeats when they differ."""
    concepts = [c for c in plan.get("concepts") or [] if isinstance(c, dict) and not c.get("is_reg")]
    repeats = [c.get("repeats") for c in concepts if c.get("repeats") is not None]
    if not repeats:
        return "repeats"
    if len(set(repeats)) == 1:
        return f"{repeats[0]} repeats"
    return "repeats (" + ", ".join(f"{c.get('name', '?')}: {c.get('repeats')}" for c in concepts[:6]) + \
        (" …" if len(concepts) > 6 else "") + ")"


def plan_markdown(plan: dict | None, vram: vramcheck.VramCheck | None = None) -> str:
    if not plan:
        return vram.line if vram else ""
    images = plan.get("images", "?")
    repeats_total = plan.get("repeats_total", plan.get("train_samples_per_epoch", plan.get("train_samples", "?")))
    steps_per_epoch = plan.get("steps_per_epoch", "?")
    text = (f"**Plan:** {images} images × {repeats_text(plan)} = {repeats_total} samples per epoch"
            f"{' + ' + str(plan['reg_images']) + ' regularization images' if plan.get('reg_images') else ''}"
            f" → {steps_per_epoch} steps/epoch (batch {plan.get('batch_size', '?')}, accumulation "
            f"{plan.get('gradient_accumulation_steps', 1)}) × {plan.get('epochs', '?')} epochs = "
            f"**{plan.get('total_steps', '?')} steps**")
    if plan.get("validation_images"):
        text += f"  \n{plan['validation_images']} more images held out for the validation loss (validation_split)"
    buckets = plan.get("buckets")
    if isinstance(buckets, dict) and buckets:
        shown = ", ".join(f"{k}: {v}" for k, v in list(buckets.items())[:12])
        text += f"  \nBuckets: {shown}" + (" …" if len(buckets) > 12 else "")
    return f"{text}  \n{vram.line}" if vram else text
