"""The names a run writes into output_dir (sd-scripts' scheme), declared once for the trainer
(trainer/train/saving.py `SavePolicy`) and the page (kohya_gui/launching.py, the overwrite guard):

    NAME-000004.safetensors        epoch 4 (save_every_n_epochs)
    NAME-step00000500.safetensors  step 500 (save_every_n_steps)
    NAME.safetensors               the finished run
    NAME-stopped.safetensors       a run stopped by the user
    <model stem>-state/            optimizer/scheduler/RNG state beside a model (save_state)

The extension is the training kind's (`model_ext`); "" means a folder (a diffusers model).
Standard library only: the GUI imports this without torch.
"""
from __future__ import annotations

import re
from pathlib import Path

KINDS = ("epoch", "step", "final", "stopped")
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
FULL_MODEL_FILES = ("safetensors", "ckpt")  # DreamBooth / fine-tune; "diffusers*" is a folder


def model_ext(config, sdxl: bool | None = None) -> str:
    """What a run with this config saves: "safetensors", "ckpt", "pt", or "" for a folder.

    `sdxl`: the loaded model's family when known (the trainer), else the config's `sdxl` flag (the page)."""
    fmt = str(config.save_model_as or "safetensors")
    if config.training_type in ("dreambooth", "finetune"):
        return fmt if fmt in FULL_MODEL_FILES else ""
    if config.training_type == "textual_inversion":
        is_sdxl = bool(config.sdxl) if sdxl is None else sdxl
        a1111_pickle = config.embedding_format == "a1111" and not is_sdxl  # SDXL embeddings are never pickles
        return "pt" if fmt in ("pt", "ckpt") or a1111_pickle else "safetensors"
    return fmt


def output_stem(name: str, kind: str, epoch: int = 0, step: int = 0) -> str:
    return {
        "epoch": f"{name}-{epoch:06d}",
        "step": f"{name}-step{step:08d}",
        "final": name,
        "stopped": f"{name}-stopped",
    }[kind]


def output_path(output_dir: Path, name: str, ext: str, kind: str, epoch: int = 0, step: int = 0) -> Path:
    stem = output_stem(name, kind, epoch, step)
    return Path(output_dir) / (f"{stem}.{ext}" if ext else stem)


def state_dir(model_path: Path) -> Path:
    """The -state folder beside a model (a file drops its extension, a folder keeps its name)."""
    model_path = Path(model_path)
    stem = model_path.stem if model_path.suffix in FILE_SUFFIXES else model_path.name
    return model_path.with_name(stem + "-state")


def output_pattern(name: str, ext: str) -> re.Pattern:
    """Every name a run may write: the four kinds of model and each one's -state folder."""
    kinds = r"(-\d{6}|-step\d{8}|-stopped)?"
    model = re.escape(f".{ext}") if ext else ""
    return re.compile(re.escape(name) + kinds + f"({model}|-state)")
