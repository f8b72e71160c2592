"""The interface every training kind offers the shared loop (see the package docstring)."""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from pathlib import Path

import torch


class KindError(ValueError):
    """A setting or file that this kind of training cannot use; the message names it and the fix."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint  # shown under the message (trainer/train/faults.py `describe`)


class TrainingKind(ABC):
    """Defaults suit a kind that trains nothing special; subclasses override what differs and must
    say what trains (`prepare`) and what a save writes (`save`)."""

    name = "base"
    trains_unet = False

    def __init__(self, config):
        self.config = config
        self.base = None
        self.warnings: list[str] = []
        seed = int(config.seed)
        self.rng = random.Random(seed * 7919 + 17)  # captions/templates: reproducible per run

    # ---- set-up ---------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, base, train_dtype: torch.dtype = torch.float32) -> list[dict]:
        """Mark what trains on ``base`` (in place) and return optimizer param groups."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter that currently trains (for gradient clipping)."""
        return [p for g in self._groups for p in g["params"] if p.requires_grad]

    @property
    def _groups(self) -> list[dict]:
        return getattr(self, "param_groups", [])

    def trained_modules(self) -> list[torch.nn.Module]:
        """Modules the loop puts in train() mode (and hands to accelerate.prepare)."""
        return []

    def scan_dataset(self, cfg=None, *, strict: bool = True, write: bool = True):
        """A ScanResult replacing trainer.data.scan_dataset(cfg), or None to use the usual folders.
        strict=False reports problems instead of raising; write=False never writes a file (preflight)."""
        return None

    # ---- per step -------------------------------------------------------------------------------
    def prepare_captions(self, captions: list[str]) -> list[str]:
        return list(captions)

    def expand_prompt(self, prompt: str) -> str:
        return prompt

    def text_encoder_grad(self) -> bool:
        """Whether the text-encoder forward must record gradients this step."""
        return False

    @property
    def text_encoder_trains(self) -> bool:
        """Whether the text-encoder output can change during the run: when True the loop must not
        cache or memoize text-encoder outputs (TextConditioner(memoize=False))."""
        return False

    def after_optimizer_step(self, global_step: int) -> None:
        """Called after every optimizer.step() with the number of steps done so far."""

    # ---- output ---------------------------------------------------------------------------------
    @property
    def output_ext(self) -> str:
        """File extension for the loop's SavePolicy ("safetensors", "ckpt", "pt"; "" = a folder)."""
        return "safetensors"

    @abstractmethod
    def save(self, path: Path, *, step: int = 0, epoch: int = 0, metadata: dict | None = None) -> Path:
        """Write the trained result to ``path`` (atomically) and return what was written."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def _warn(self, message: str) -> None:
        self.warnings.append(message)


def cast_module(module: torch.nn.Module, dtype: torch.dtype, device=None) -> torch.nn.Module:
    """module.to(device, dtype) through torch's own Module.to: diffusers' override logs a warning about
    "modules that should be kept in float32" on every dtype cast, even when that list is empty."""
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def save_dtype(name) -> torch.dtype:
    """Kohya's save_precision ("fp16", "bf16", "float"/"fp32") as a torch dtype."""
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "float": torch.float32, "fp32": torch.float32, "float32": torch.float32, None: torch.float32,
             "": torch.float32}
    if isinstance(name, torch.dtype):
        return name
    try:
        return table[name]
    except KeyError:
        raise KindError(f"save_precision {name!r} is not one of fp16, bf16, float") from None
