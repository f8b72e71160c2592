"""`python -m trainer run CONFIG`: one training run (LoRA, DreamBooth, fine-tune or TI), settings to output.

    run_training(config, events) -> exit code

Order of events: plan → cache… → step… (saved, sample) … → done | stopped | failed.
Every failure ends in an `error` + `failed` pair with a hint; a traceback only ever reaches the log.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import set_seed
from trainer.config.defaults import option

from . import setup as S
from .faults import EXIT_ABORTED, TrainingFault, describe, is_out_of_memory
from .graphs import make_step_fn
from .metadata import at_save, bucket_info, training_metadata
from .progress import Progress, open_tracker
from .optimizers import evaluation_weights
from .samples import generate_samples, load_prompts
from trainer.crashpoints import crash_point
from trainer.kinds import create_kind
from trainer.plan import epoch_save_interval

from .leftovers import clean_leftovers
from .saving import Retention, SavePolicy, adoptable, check_no_collisions, check_writable, write_settings_json
from .state import TrainState, check_resume_settings, load_state, read_train_state, save_state
from .stop import AbortRequested, StopSignal
from .text import modules_on
from .validation import Validator

logger = logging.getLogger(__name__)


class TrainingRun:
    def __init__(self, config, events, stop: StopSignal):
        self.config, self.events, self.stop = config, events, stop
        self.outputs: list[Path] = []
        self.started = time.time()

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.events.warning(message)

    # --- preparation -----------------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.config
        resume_dir = cfg.resume
        self.resumed = read_train_state(Path(resume_dir)) if resume_dir else None
        self.seed = self.resumed.seed if self.resumed else S.resolve_seed(cfg)
        self.config = cfg = S.with_values(cfg, seed=self.seed)
        self.kind = create_kind(cfg)
        self.acc, self.mp = S.make_accelerator(cfg, self.warn)
        set_seed(self.seed)  # the same initial LoRA weights on every rank and in every repeat of the run
        self.main = self.acc.is_main_process
        if not self.main:
            self.events.enabled = False
        self.policy = SavePolicy.from_config(cfg)
        self.policy.ext = self.kind.output_ext  # a kind may change it in prepare(); read again there
        if self.main:
            check_writable(self.policy.output_dir)
            if not cfg.output_dir:
                self.warn(f"output_dir is empty, so the trained files go to the current folder "
                          f"({self.policy.output_dir.resolve()}); set output_dir to choose where")
        self.base = S.load_base(cfg, self.acc, self.mp)
        scan, latents, self.dataset, self.steps, need_flip = S.build_data(cfg, self.base, self.acc, self.events,
                                                                          self.kind.scan_dataset(cfg))
        self.plan = S.plan_event(cfg, self.dataset, self.steps, self.base, self.acc)
        self.dataset.set_total_steps(self.plan["total_steps"])
        # save_n_epoch_ratio needs the run's epochs, known only now
        self.policy.every_n_epochs = epoch_save_interval(self.plan["epochs"], cfg.save_every_n_epochs,
                                                         cfg.save_n_epoch_ratio)
        self.plan["warmup_steps"] = S.warmup_for_plan(cfg, self.plan["total_steps"])
        owned = set(self.resumed.written) if self.resumed else set()
        if self.main:
            self.clean_leftovers()
            if self.resumed:
                owned |= adoptable(self.policy, self.plan["epochs"], self.plan["total_steps"], self.resumed)
            check_no_collisions(self.policy, self.plan["epochs"], self.plan["total_steps"], owned)
            settings = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(vars(cfg))
            self.settings_path = write_settings_json(self.policy.output_dir, self.policy.output_name, settings)
        self.events.emit("plan", **{k: self.plan[k] for k in (
            "images", "validation_images", "repeats_total", "reg_images", "buckets", "steps_per_epoch", "epochs",
            "total_steps", "batch_size", "gradient_accumulation_steps", "family", "num_processes")})
        if latents is not None:
            S.cache_latents(latents, scan, need_flip, self.acc)
            if scan.validation:  # the held-out images' latents too, without touching the run's random state
                with torch.random.fork_rng(devices=[self.acc.device] if self.acc.device.type == "cuda" else []):
                    S.cache_latents(latents, scan.validation, need_flip, self.acc)
        self.prompts = load_prompts(cfg.sample_prompts)
        if latents is not None and not self.prompts and self.acc.device.type == "cuda":
            self.base.vae.to("cpu")  # cached: the VAE is not needed on the GPU any more
        groups = self.kind.prepare(self.base, S.network_dtype(cfg, self.mp))
        for message in self.kind.warnings:
            self.warn(message)
        self.kind.warnings.clear()
        self.policy.ext = self.kind.output_ext
        self.ctx = S.build_step_context(cfg, self.base, self.kind, groups, self.acc, self.mp, self.seed, self.warn,
                                        self.plan["total_steps"], cached=latents is not None,
                                        dataset=self.dataset, events=self.events)
        self.step_fn = make_step_fn(self.ctx, cfg, self.warn)
        self.validator = Validator(self.ctx, cfg, scan.validation, latents, self.kind, self.events) \
            if scan.validation else None
        self.state = TrainState(seed=self.seed, total_steps=self.plan["total_steps"], settings=self.resume_settings())
        self.missing_result: dict = {}
        if self.resumed:
            check_resume_settings(self.resumed.settings, self.state.settings, self.warn)
            loaded = load_state(Path(resume_dir), self.kind, self.ctx.optimizer, self.ctx.lr_scheduler,
                                self.acc.scaler)
            self.state.epoch, self.state.step_in_epoch = loaded.epoch, loaded.step_in_epoch
            self.state.global_step, self.state.written = loaded.global_step, list(loaded.written)
            self.state.session_id = loaded.session_id
            saved_with = loaded.saved_with or {}
            if saved_with.get("path") and not Path(saved_with["path"]).exists():
                self.missing_result = saved_with  # killed between the state and its model file
            logger.info("resumed from %s at epoch %d, step %d", resume_dir, loaded.epoch, loaded.global_step)
        self.retention = Retention(self.policy, self.state.written)
        self.meta = training_metadata(
            cfg, base=self.base, plan=self.plan, seed=self.seed, started_at=self.started, mixed_precision=self.mp,
            optimizer_desc=S.describe_optimizer(self.ctx.optimizer, cfg), dataset_dirs=dataset_dirs(scan),
            tag_frequency=tag_frequency(scan), reg_dataset_dirs=dataset_dirs(scan, reg=True),
            bucket_info=bucket_info(self.dataset.bucket_counts(), [it.placement.ar_error for it in scan.items]),
            masked=any(s.spec.masked for ds in scan.datasets for s in ds.subsets))
        if self.state.session_id:  # a resumed run is the same session: its files say so
            self.meta["ss_session_id"] = self.state.session_id
        self.state.session_id = self.meta["ss_session_id"]

    def clean_leftovers(self) -> None:
        """Temp files and folders a killed run left (its saves are atomic), named in the log."""
        names = {p.name for p in self.policy.planned_paths(self.plan["epochs"], self.plan["total_steps"])}
        names.add(f"{self.policy.output_name}_settings")  # never a real name: keeps the set non-empty
        for line in clean_leftovers(self.policy.output_dir, names):
            self.warn(f"A crashed earlier run left temporary files in {self.policy.output_dir}: {line}.")

    def resume_settings(self) -> dict:
        c = self.config
        return {"network_dim": option(c, "network_dim"), "train_batch_size": c.train_batch_size,
                "gradient_accumulation_steps": c.gradient_accumulation_steps,
                "num_processes": self.acc.num_processes, "total_steps": self.plan["total_steps"],
                "optimizer": c.optimizer, "base_weights": option(c, "base_weights"),
                "base_weights_multiplier": option(c, "base_weights_multiplier")}

    # --- the loop --------------------------------------------------------------------------------

    def train(self) -> str:
        total, epochs, per_epoch = self.plan["total_steps"], self.plan["epochs"], self.plan["steps_per_epoch"]
        self.progress = Progress(self.events, total, epochs, self.state.global_step,
                                 tracker=open_tracker(self.config, self.main), enabled=self.main,
                                 lr_names=[str(g.get("name") or "") for g in self.ctx.optimizer.param_groups])
        for module in self.kind.trained_modules():
            module.train()
        if self.missing_result and self.main:
            m = self.missing_result
            self.warn(f"resume: {Path(m['path']).name} was not written (the run was killed right after saving its "
                      "state); writing it now from the state.")
            with evaluation_weights(self.ctx.optimizer):
                self.write_model(Path(m["path"]), m["kind"], m["epoch"], m["step"])
        if self.config.sample_at_first and self.state.global_step == 0:
            self.sample(0, None)
        try:
            while self.state.global_step < total:
                epoch, skip = self.state.epoch, self.state.step_in_epoch
                for micro in self.steps.epoch(epoch, skip_steps=skip):
                    for batch in micro:
                        batch["captions"] = self.kind.prepare_captions(batch["captions"])
                    loss = self.step_fn(micro, self.state.global_step)
                    self.kind.after_optimizer_step(self.state.global_step + 1)
                    self.state.global_step += 1
                    self.state.step_in_epoch += 1
                    step = self.state.global_step
                    crash_point(f"step:{step}")
                    self.progress.record(step, epoch, loss, self.ctx.lr_scheduler.get_last_lr())
                    if self.validator and self.validator.step_due(step):
                        self.validate(step, None)
                    if self.policy.step_due(step, total):
                        self.save("step", epoch, step)
                    if every(self.config, "sample_every_n_steps", step):
                        self.sample(step, None)
                    if step >= total or self.state.step_in_epoch >= per_epoch:
                        break
                    if self.stop_agreed():
                        return self.finish_stopped()
                if self.state.global_step < total or self.state.step_in_epoch >= per_epoch:
                    self.end_epoch(epoch, epochs)
                if self.state.global_step < total and self.stop_agreed():
                    return self.finish_stopped()
            self.finish_done()
            return "done"
        finally:
            self.progress.close()

    def end_epoch(self, epoch: int, epochs: int) -> None:
        self.progress.end_epoch(epoch)
        if self.validator and self.validator.epoch_due(epoch):  # before the epoch's save: a resume never repeats it
            self.validate(self.state.global_step, epoch)
        self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
        if self.policy.epoch_due(epoch, epochs) and self.state.global_step < self.plan["total_steps"]:
            self.save("epoch", epoch, self.state.global_step)
        if every(self.config, "sample_every_n_epochs", epoch):
            self.sample(self.state.global_step, epoch)

    def validate(self, step: int, epoch: int | None) -> None:
        self.progress.flush()  # the training average the divergence is taken against
        losses = self.progress.epoch_losses
        self.validator.report(step, epoch, sum(losses) / len(losses) if losses else None, self.progress.tracker)

    def stop_agreed(self) -> bool:
        """Every rank must stop at the same step, whichever one got the signal."""
        flag = self.stop.requested
        if self.acc.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    # --- outputs ---------------------------------------------------------------------------------

    def save(self, kind: str, epoch: int, step: int, with_state: bool | None = None) -> Path:
        self.progress.flush()  # raises on a NaN loss before anything is written
        path = self.policy.path(kind, epoch=epoch, step=step)
        if with_state is None:
            with_state = self.policy.save_state
        if self.main:
            # the state first, listing the model file written next: a kill at any moment leaves either the
            # previous state (this step is redone; no file of it exists yet) or this one (the resume writes
            # a missing model file from it) — never a result that no state knows
            self.retention.record(path)
            if with_state:
                self.retention.record(self.policy.state_dir(path))  # before writing: the state lists itself
                self.state.saved_with = {"path": str(path), "kind": kind, "epoch": epoch, "step": step}
                folder = save_state(self.policy.state_dir(path), self.kind, self.ctx.optimizer,
                                    self.ctx.lr_scheduler, self.acc.scaler, self.state)
                self.state.saved_with = {}
                self.events.emit("saved", path=str(folder), size=size_of(folder), kind="state", verified=None)
            # schedule-free optimizers: the file holds the averaged weights, the state the raw ones
            with evaluation_weights(self.ctx.optimizer):
                self.write_model(path, kind, epoch, step)
            if kind == "epoch":
                self.retention.prune_epochs(epoch)
            elif kind == "step":
                self.retention.prune_steps(step)
        self.acc.wait_for_everyone()
        return path

    def write_model(self, path: Path, kind: str, epoch: int, step: int) -> None:
        path = self.kind.save(path, step=step, epoch=epoch, metadata=at_save(self.meta, epoch, step))
        for message in self.kind.warnings:
            self.warn(message)
        self.kind.warnings.clear()
        self.retention.record(path)
        self.progress.last_good_path = str(path)
        self.outputs.append(path)
        self.events.emit("saved", path=str(path), size=size_of(path), kind=kind,
                         verified=getattr(self.kind, "last_verified", None))

    def sample(self, step: int, epoch: int | None) -> None:
        if not self.prompts:
            return
        if self.main:
            from trainer.config import parse_resolution

            tracker = self.progress.tracker

            def on_image(path, index, prompt, image):
                self.events.emit("sample", path=str(path), step=step, epoch=epoch, index=index, prompt=prompt.prompt)
                if tracker is not None:
                    import numpy as np

                    tracker.add_image(f"sample_{index}", np.asarray(image), step, dataformats="HWC")

            prompts = [replace(p, prompt=self.kind.expand_prompt(p.prompt)) for p in self.prompts]
            # the VAE and cached text encoders may wait off the GPU; each goes back where it was
            try:
                with modules_on(self.acc.device, self.base.vae, *self.base.text_encoders), \
                        evaluation_weights(self.ctx.optimizer):
                    generate_samples(self.base, self.kind.trained_modules(), prompts,
                                     sampler_name=self.config.sample_sampler, out_dir=self.policy.output_dir / "sample",
                                     output_name=self.policy.output_name, step=step, epoch=epoch,
                                     default_size=parse_resolution(self.config.resolution), seed=self.seed,
                                     clip_skip=int(self.config.clip_skip),
                                     autocast_dtype=S.weight_dtype(self.mp), device=self.acc.device,
                                     on_image=on_image,
                                     t5_length=int(self.config.t5xxl_max_token_length) or None)
            except Exception as exc:  # noqa: BLE001 — samples are a preview: never lose the run over one
                if not is_out_of_memory(exc):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.warn(f"Sample images at step {step} were skipped: the GPU ran out of memory while making them "
                          "(training continues). Smaller sample sizes (--w/--h in the prompts) or cuda_graphs off "
                          "(captured steps keep a step's memory reserved) leave room for them.")
        self.acc.wait_for_everyone()

    def finish_done(self) -> None:
        on_end = self.policy.save_state_on_train_end
        self.save("final", self.state.epoch - (1 if self.state.step_in_epoch == 0 else 0), self.state.global_step,
                  with_state=on_end)

    def finish_stopped(self) -> str:
        logger.warning("stopping at step %d (%s)", self.state.global_step, self.stop.signal_name)
        self.save("stopped", self.state.epoch, self.state.global_step, with_state=True)
        return "stopped"


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def every(config, option: str, n: int) -> bool:
    k = int(getattr(config, option))
    return k > 0 and n % k == 0


def dataset_dirs(scan, reg: bool = False) -> dict:
    """{folder: {"n_repeats", "img_count"}} of the training (or, with `reg`, regularization) subsets."""
    out = {}
    for ds in scan.datasets:
        for sub in ds.subsets:
            if bool(sub.spec.is_reg) != reg:
                continue
            out[sub.spec.label or sub.spec.image_dir.name] = {"n_repeats": sub.spec.num_repeats,
                                                              "img_count": len(sub.items)}
    return out


def tag_frequency(scan) -> dict:
    out: dict[str, dict[str, int]] = {}
    for item in scan.items:
        ds = scan.datasets[item.dataset].subsets[item.subset].spec
        counts = out.setdefault(ds.label or ds.image_dir.name, {})
        for tag in (t.strip() for t in item.caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return out


def run_training(config, events, stop: StopSignal | None = None) -> int:
    """Run to the end; returns the process exit code (0 done/stopped, 1 failed, 130 aborted)."""
    stop = stop or StopSignal().install()
    run = TrainingRun(config, events, stop)
    try:
        run.prepare()
        outcome = run.train()
        if outcome == "stopped":
            events.stopped([str(p) for p in run.outputs], run.state.global_step)
        else:
            events.done([str(p) for p in run.outputs])
        log_final_digest(run)
        return 0
    except AbortRequested as exc:
        fault = TrainingFault(f"Aborted: {exc}; nothing more was saved.",
                              "Stop once (and wait for the current step) to save the LoRA before exiting.",
                              EXIT_ABORTED)
    except BaseException as exc:  # noqa: BLE001 — every failure must end in a `failed` event
        fault = describe(exc)
        if fault.unexpected:  # an expected error (a corrupt model file, a full disk) is its one line below
            logger.error("training failed:\n%s", traceback.format_exc())
        if isinstance(exc, KeyboardInterrupt):
            fault.exit_code = EXIT_ABORTED
    logger.error("%s %s", fault.message, fault.hint)
    events.error(fault.message, fault.hint)
    events.failed(fault.message, fault.hint, fault.exit_code)
    return fault.exit_code


def log_final_digest(run: TrainingRun) -> None:
    """Each rank logs a digest of its final weights: identical digests prove DDP kept ranks in step."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(run.kind.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    logger.info("rank %d final network digest %s", run.acc.process_index, h.hexdigest()[:16])
