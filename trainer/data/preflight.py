"""Preflight: everything about the dataset a user should see before a run starts, as JSON and text.

Imports no torch, so the GUI can call it without loading the training stack."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .buckets import bucket_key
from .epochs import EpochPlan
from trainer.problems import Problem

from .errors import DatasetError
from .options import steps_for
from .scan import ScanResult, cache_problems, scan_dataset, text_cache_problems

IMBALANCE_RATIO = 5  # a concept with 5x the samples of another dominates what the model learns
MAX_LISTED = 50  # per kind of warning about single files; the rest is counted


@dataclass
class ConceptReport:
    name: str
    path: str
    is_reg: bool
    images: int
    captions_found: int
    captions_missing: int
    repeats: int
    samples_per_epoch: int
    steps_per_epoch: int  # this concept's share: ceil(samples / batch / accumulation)
    held_out: int = 0  # images set aside for the validation loss (not in `images`)


@dataclass
class PreflightReport:
    ok: bool
    concepts: list[ConceptReport] = field(default_factory=list)
    images: int = 0
    reg_images: int = 0
    validation_images: int = 0  # held out by validation_split: measured, never trained on
    train_samples_per_epoch: int = 0
    reg_samples_per_epoch: int = 0
    reg_share: float = 0.0
    buckets: dict[str, int] = field(default_factory=dict)  # images per bucket
    bucket_samples: dict[str, int] = field(default_factory=dict)  # samples per epoch per bucket
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    batches_per_epoch: int = 0
    steps_per_epoch: int = 0
    epochs: int = 0
    total_steps: int = 0
    bad_files: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        lines = ["Dataset preflight: " + ("OK" if self.ok else "PROBLEMS — training cannot start")]
        if self.concepts:
            lines.append("")
            lines.append(f"{'concept':32} {'images':>6} {'captions':>9} {'missing':>7} {'repeats':>7} "
                         f"{'samples':>7} {'steps':>6}")
            for c in self.concepts:
                name = ("[reg] " if c.is_reg else "") + c.name
                lines.append(f"{name[:32]:32} {c.images:>6} {c.captions_found:>9} {c.captions_missing:>7} "
                             f"{c.repeats:>7} {c.samples_per_epoch:>7} {c.steps_per_epoch:>6}")
        lines.append("")
        lines.append(f"Training images: {self.images} ({self.train_samples_per_epoch} samples per epoch with repeats)")
        if self.validation_images:
            lines.append(f"Validation images: {self.validation_images} held out (validation_split), not trained on")
        if self.reg_images:
            lines.append(f"Regularization images: {self.reg_images} ({self.reg_samples_per_epoch} samples per "
                         f"epoch, {self.reg_share:.0%} of each epoch)")
        if self.buckets:
            lines.append("Buckets (images / samples per epoch): " + ", ".join(
                f"{k}: {v}/{self.bucket_samples.get(k, 0)}" for k, v in self.buckets.items()))
        lines.append(f"Batch size {self.batch_size} x accumulation {self.gradient_accumulation_steps}: "
                     f"{self.batches_per_epoch} batches = {self.steps_per_epoch} steps per epoch; "
                     f"{self.epochs} epochs = {self.total_steps} steps")
        for title, entries in (("Errors", self.errors), ("Skipped files", self.bad_files),
                               ("Warnings", self.warnings)):
            if entries:
                lines.append("")
                lines.append(f"{title} ({len(entries)}):")
                for e in entries:
                    where = f"{e['path']}: " if e.get("path") else ""
                    lines.append(f"  - {where}{e['message']}")
                    if e.get("hint"):
                        lines.extend("      " + h for h in e["hint"].splitlines())
        return "\n".join(lines)


def preflight(cfg, scan: ScanResult | None = None) -> PreflightReport:
    """Scan without stopping at the first problem and report everything; never raises on bad data."""
    try:
        scan = scan if scan is not None else scan_dataset(cfg, strict=False)
    except DatasetError as exc:  # the dataset config itself could not be read
        return PreflightReport(ok=False, errors=[p.to_dict() for p in exc.problems])
    problems = list(scan.problems) + _model_and_output(cfg)
    if cfg.cache_latents or cfg.cache_latents_to_disk:
        problems += cache_problems(scan)
    if cfg.cache_text_encoder_outputs:
        problems += text_cache_problems(scan)
    report = PreflightReport(ok=False)
    report.batch_size = max(ds.spec.batch_size for ds in scan.datasets) if scan.datasets else 1
    report.gradient_accumulation_steps = max(1, int(cfg.gradient_accumulation_steps))
    if any(not it.is_reg for it in scan.items):
        _fill_counts(report, scan, EpochPlan(scan, int(cfg.seed)), cfg, problems)
    problems += _file_warnings(scan)
    report.errors = [p.to_dict() for p in problems if p.level == "error"]
    report.bad_files = [p.to_dict() for p in problems if p.level == "skipped"]
    report.warnings = [p.to_dict() for p in problems if p.level == "warning"]
    report.ok = not report.errors
    return report


def _model_and_output(cfg) -> list[Problem]:
    """A base model path that does not exist and a missing output folder stop a run as surely as a
    missing image folder does."""
    from trainer.config.paths import model_and_output_problems

    return model_and_output_problems(cfg) + \
        _optimizer_library(cfg)


def _optimizer_library(cfg) -> list[Problem]:
    """An optimizer from an optional package that is not installed: say which extra installs it."""
    import importlib.util

    from trainer.config.options_train import OPTIONAL_OPTIMIZERS

    name = cfg.optimizer
    if name not in OPTIONAL_OPTIMIZERS:
        return []
    module, extra = OPTIONAL_OPTIMIZERS[name]
    if importlib.util.find_spec(module) is not None:
        return []
    return [Problem("error", f"the optimizer {name} needs the package {module}, which is not installed",
                    f"pip install 'kohya-studio[{extra}]', or choose AdamW", field="optimizer")]


def _fill_counts(report: PreflightReport, scan: ScanResult, dataset: EpochPlan, cfg,
                 problems: list[Problem]) -> None:
    train_samples, reg_samples = dataset.samples_per_epoch()
    report.train_samples_per_epoch, report.reg_samples_per_epoch = train_samples, reg_samples
    report.reg_share = reg_samples / (train_samples + reg_samples) if train_samples + reg_samples else 0.0
    report.images = sum(1 for it in scan.items if not it.is_reg)
    report.reg_images = sum(1 for it in scan.items if it.is_reg)
    report.validation_images = len(scan.validation.items) if scan.validation else 0
    images_per_bucket: dict[tuple[int, int], int] = {}
    for it in scan.items:
        images_per_bucket[it.placement.bucket] = images_per_bucket.get(it.placement.bucket, 0) + 1
    report.buckets = {bucket_key(b): n for b, n in sorted(images_per_bucket.items())}
    report.bucket_samples = {bucket_key(b): n for b, n in dataset.bucket_counts().items()}
    report.batches_per_epoch = dataset.batches_per_epoch()
    report.steps_per_epoch, report.epochs, report.total_steps = _steps(scan, dataset, report, cfg)
    accum = report.gradient_accumulation_steps
    reg_pool = sum(s.samples for ds in scan.datasets for s in ds.subsets if s.spec.is_reg)
    for ds in scan.datasets:
        for s in ds.subsets:
            samples = s.samples
            if s.spec.is_reg and reg_pool:  # its share of the balanced reg samples
                samples = round(reg_samples * s.samples / reg_pool)
            report.concepts.append(ConceptReport(
                s.spec.label, str(s.spec.image_dir), s.spec.is_reg, len(s.items), s.captions_found,
                s.captions_missing, s.spec.num_repeats, samples,
                math.ceil(samples / ds.spec.batch_size / accum), s.held_out))
    if reg_pool and reg_pool > reg_samples:
        problems.append(Problem("warning", f"{reg_pool} regularization samples but each epoch uses "
                                f"{reg_samples} (as many as training samples); a different seeded selection "
                                "is used every epoch", "fine as is; fewer reg images make epochs identical"))
    counts = [c.samples_per_epoch for c in report.concepts if not c.is_reg and c.samples_per_epoch]
    if len(counts) > 1 and max(counts) >= IMBALANCE_RATIO * min(counts):
        big = max((c for c in report.concepts if not c.is_reg), key=lambda c: c.samples_per_epoch)
        small = min((c for c in report.concepts if not c.is_reg and c.samples_per_epoch),
                    key=lambda c: c.samples_per_epoch)
        problems.append(Problem("warning", f"concept imbalance: {big.name!r} has {big.samples_per_epoch} samples "
                                f"per epoch, {small.name!r} only {small.samples_per_epoch}",
                                "balance them with the repeats prefix (images x repeats about equal)"))


def _steps(scan: ScanResult, dataset: EpochPlan, report: PreflightReport, cfg) -> tuple[int, int, int]:
    """The project's planner (trainer.plan) with exact per-bucket batch counts; a dataset TOML with
    several [[datasets]] of different batch sizes is counted here directly."""
    plan = exact_plan(scan, cfg, dataset)
    if plan is None:
        return steps_for(report.batches_per_epoch, cfg)
    return plan.steps_per_epoch, plan.epochs, plan.total_steps


def exact_plan(scan: ScanResult, cfg, dataset: EpochPlan | None = None):
    """The Plan of one [[datasets]] counted per bucket, as the trainer batches it (None when the
    dataset has several [[datasets]] or no training image). `plan` and `preflight` both print it."""
    if len(scan.datasets) != 1 or not any(not it.is_reg for it in scan.items):
        return None
    from trainer.plan import compute_plan

    dataset = dataset or EpochPlan(scan, int(cfg.seed))
    subsets = scan.datasets[0].subsets
    return compute_plan([(len(s.items), s.spec.num_repeats) for s in subsets if not s.spec.is_reg],
                        [(len(s.items), s.spec.num_repeats) for s in subsets if s.spec.is_reg],
                        epochs=int(cfg.epoch), batch_size=scan.datasets[0].spec.batch_size,
                        gradient_accumulation_steps=max(1, int(cfg.gradient_accumulation_steps)),
                        max_train_steps=int(cfg.max_train_steps),
                        num_processes=max(1, int(cfg.num_processes)),
                        bucket_sizes=list(dataset.bucket_counts().values()))


def _file_warnings(scan: ScanResult) -> list[Problem]:
    """Images smaller than their bucket are enlarged, which softens them."""
    small = [it for it in scan.items
             if it.placement.resized[0] > it.facts.size[0] or it.placement.resized[1] > it.facts.size[1]]
    out = [Problem("warning", f"{it.facts.size[0]}x{it.facts.size[1]} is smaller than its bucket "
                   f"{bucket_key(it.placement.bucket)} and gets upscaled",
                   "use a larger image, lower resolution, or tick bucket_no_upscale", str(it.path))
           for it in small[:MAX_LISTED]]
    if len(small) > MAX_LISTED:
        out.append(Problem("warning", f"{len(small) - MAX_LISTED} more images are upscaled"))
    return out
