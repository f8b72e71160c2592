"""Training state for `save_state` / `resume`: everything a resumed run needs to continue exactly.

A state folder (NAME-000004-state/) holds
    network.safetensors   the trained weights at full precision (the model file may be fp16);
                          for other kinds, what the kind's state_dict() holds
    optimizer.pt          optimizer state dict (moments, step counts)
    scheduler.pt          learning-rate scheduler state dict
    scaler.pt             fp16 loss-scaler state (only with fp16)
    train_state.json      epoch, step within the epoch, global step, seed, files this run wrote,
                          the session id (ss_session_id) and the model file saved with this state

Random numbers need no saving: every step reseeds from (seed, rank, step) and the data order is a
function of (seed, epoch), so restoring the counters restores the randomness. The folder is written
under a temporary name and renamed, so a crash never leaves a half state.

Order of a save (trainer/train/run.py): the state folder first (it lists the model file that follows),
then the model file. A kill between the two leaves a state whose model file is missing: the resume writes
it from the state's weights. A kill before the state is renamed leaves the previous state, which does
not know the new step; no model file of that step exists yet.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.atomic import atomic_folder

from .faults import TrainingFault, disk_full, is_write_failure

FORMAT = 1


@dataclass
class TrainState:
    epoch: int = 1              # the epoch in progress (1-based)
    step_in_epoch: int = 0      # optimizer steps already done in that epoch
    global_step: int = 0
    seed: int = 0
    total_steps: int = 0
    written: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # what must match on resume (network shape, batch, ...)
    session_id: str = ""        # ss_session_id of the run (kept across resumes): whose files are whose
    saved_with: dict = field(default_factory=dict)  # the model file written right after: path, kind, epoch, step
    format: int = FORMAT


def save_state(folder: Path, trained, optimizer, lr_scheduler, scaler, state: TrainState) -> Path:
    folder = Path(folder)  # replaced only when this run wrote it (checked by the caller)
    try:
        with atomic_folder(folder) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in trained.state_dict().items()},
                      str(tmp / "network.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None:
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            (tmp / "train_state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 — only write failures are turned into a fault; the rest re-raised
        if is_write_failure(exc):  # the temp folder is gone again; the previous state is intact
            raise disk_full(folder, f"the training state {folder}") from exc
        raise
    return folder


def read_train_state(folder: Path) -> TrainState:
    folder = Path(folder).expanduser()
    path = folder / "train_state.json"
    if not path.is_file():
        raise TrainingFault(f"resume: {folder} is not a training state folder (train_state.json is missing).",
                            "Point resume at a NAME-000004-state folder written with save_state on.")
    data = json.loads(path.read_text(encoding="utf-8"))
    known = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in data.items() if k in known})


def load_state(folder: Path, trained, optimizer, lr_scheduler, scaler) -> TrainState:
    folder = Path(folder).expanduser()
    state = read_train_state(folder)
    try:
        trained.load_state_dict(load_file(str(folder / "network.safetensors")))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
        if scaler is not None and (folder / "scaler.pt").is_file():
            scaler.load_state_dict(torch.load(folder / "scaler.pt", map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise TrainingFault(f"resume: the state in {folder} does not fit this run ({exc}).",
                            "Resume with the settings the state was saved with (network_dim, conv_dim, optimizer, "
                            "block_lr's zero blocks, train the same parts), or start a new run.") from exc
    return state


def check_resume_settings(saved: dict, current: dict, warn) -> None:
    """Settings that change the meaning of the saved counters: warn, naming each difference."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            warn(f"resume: {key} was {saved[key]!r} when the state was saved and is {value!r} now; the resumed "
                 "run will not match an uninterrupted one.")
