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

from trainer.config import check_paths, save_config_json, validate_values

PREFLIGHT_TIMEOUT = 300


@dataclass(frozen=True)
class Issue:
    """A problem for display: same shape as trainer.config.Problem plus an optional hint."""

    field: str
    message: str
    level: str = "error"
    hint: str = ""


@dataclass
class CheckResult:
    config: Any = None
    problems: list[Issue] = field(default_factory=list)
    plan: dict | None = None
    preflight_ran: bool = False
    preflight_note: str = ""

    @property
    def errors(self) -> list[Issue]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.errors


def _issue(p) -> Issue:
    return Issue(str(getattr(p, "field", "config")), str(getattr(p, "message", p)),
                 str(getattr(p, "level", "error")), str(getattr(p, "hint", "") or ""))


def empty_number_issues(specs, values: dict) -> list[Issue]:
    """Number boxes left empty where the option needs a number (clearer than pydantic's text)."""
    return [Issue(s.name, f"is empty; enter a number (default {s.default})")
            for s in specs if s.kind in ("int", "float") and not s.optional and values.get(s.name) is None]


def check_values(training_type: str, values: dict, specs) -> CheckResult:
    """Pure checks (no disk): what can be shown while the user types."""
    empties = empty_number_issues(specs, values)
    blanks = {i.field for i in empties}
    config, problems = validate_values(training_type, {k: v for k, v in values.items() if k not in blanks})
    issues = empties + [_issue(p) for p in problems if p.field not in blanks]
    return CheckResult(config=None if empties else config, problems=issues)


def check_all(training_type: str, values: dict, specs, *, python: str, workspace: Path,
              cwd: Path | None = None, preflight: bool = True) -> CheckResult:
    """Values, then paths, then (when those pass) the dataset preflight in a subprocess."""
    result = check_values(training_type, values, specs)
    if result.config is None:
        return result
    result.problems += [_issue(p) for p in check_paths(result.config)]
    if preflight and not result.errors:
        issues, plan, note = run_preflight(result.config, python=python, workspace=workspace, cwd=cwd)
        result.problems += issues
        result.plan, result.preflight_ran, result.preflight_note = plan, True, note
    return result


# ---- the trainer's preflight ---------------------------------------------------------------------

def run_preflight(config, *, python: str, workspace: Path, cwd: Path | None = None,
                  timeout: float = PREFLIGHT_TIMEOUT) -> tuple[list[Issue], dict | None, str]:
    tmp_dir = Path(workspace) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_dir / f"preflight-{uuid.uuid4().hex[:8]}.json"
    save_config_json(config, cfg_path)
    try:
        proc = subprocess.run([python, "-m", "trainer", "preflight", str(cfg_path), "--json"],
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return [Issue("train_data_dir", f"the dataset check did not finish within {timeout:.0f} s",
                      "warning")], None, ""
    finally:
        cfg_path.unlink(missing_ok=True)
    report = _json_from(proc.stdout)
    if report is None:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:600]
        return [Issue("train_data_dir", f"the dataset check could not run (exit code {proc.returncode}): "
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


def parse_preflight(report: dict, config) -> tuple[list[Issue], dict | None, str]:
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
            severity = str(raw.get("severity") or raw.get("level") or default)
            message = str(raw.get("message", ""))
            if severity == "skipped":
                message = f"skipped: {message}"
            if raw.get("path") and str(raw["path"]) not in message:
                message = f"{raw['path']}: {message}"
            issues.append(Issue(_field_for(raw, config), message, "error" if severity == "error" else "warning",
                                str(raw.get("hint") or "")))
    plan = report.get("plan") if isinstance(report.get("plan"), dict) else (
        report if "total_steps" in report else None)
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


def _line(p: Issue, labels: dict[str, str]) -> str:
    name = labels.get(p.field, p.field)
    hint = ""
    if p.hint and p.hint not in p.message:
        first, _, rest = p.hint.partition("\n")
        hint = f"  \n  ↳ {first}"
        if rest.strip():   # e.g. the expected folder layout: keep its indentation
            hint += "\n\n  ```\n" + "\n".join(f"  {ln}" for ln in rest.splitlines()) + "\n  ```"
    return f"- **{name}** (`{p.field}`): {p.message}{hint}"


def plan_markdown(plan: dict | None) -> str:
    if not plan:
        return ""
    images = plan.get("images", "?")
    repeats_total = plan.get("repeats_total", plan.get("train_samples_per_epoch", plan.get("train_samples", "?")))
    steps_per_epoch = plan.get("steps_per_epoch", "?")
    text = (f"**Plan:** {images} images × repeats = {repeats_total} samples per epoch"
            f"{' + ' + str(plan['reg_images']) + ' regularization images' if plan.get('reg_images') else ''}"
            f" → {steps_per_epoch} steps/epoch (batch {plan.get('batch_size', '?')}, accumulation "
            f"{plan.get('gradient_accumulation_steps', 1)}) × {plan.get('epochs', '?')} epochs = "
            f"**{plan.get('total_steps', '?')} steps**")
    buckets = plan.get("buckets")
    if isinstance(buckets, dict) and buckets:
        shown = ", ".join(f"{k}: {v}" for k, v in list(buckets.items())[:12])
        text += f"  \nBuckets: {shown}" + (" …" if len(buckets) > 12 else "")
    return text
