"""DreamBooth-style full fine-tune (sd-scripts train_db.py, §5.2) and Kohya's fine-tuning (fine_tune.py, §5.3).

Both train every U-Net weight, and the text encoder(s) optionally; both save a complete model:
a single file in the original CompVis/SGM layout (``safetensors`` / ``ckpt``, loads in A1111,
ComfyUI, diffusers ``from_single_file``) or a diffusers folder (``diffusers`` /
``diffusers_safetensors``), cast to ``save_precision``.

DreamBooth: the text encoder trains when ``learning_rate_te`` > 0, until ``stop_text_encoder_training``
optimizer steps are done (0 = the whole run). Fine-tuning: when ``train_text_encoder`` is on, at
``learning_rate_te`` (0 = the U-Net's learning rate). Prior preservation is the data pipeline's:
class images come with ``loss_weights`` = ``prior_loss_weight``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from trainer.config.block_lr import parse_block_lr
from trainer.config.defaults import option
from trainer.families import FAMILY_NAMES

from trainer.output_names import model_ext

from .base import KindError, TrainingKind, cast_module, save_dtype

SINGLE_FILE = {"safetensors": "safetensors", "ckpt": "ckpt"}
DIFFUSERS = ("diffusers", "diffusers_safetensors")


class DreamboothKind(TrainingKind):
    name = "dreambooth"
    trains_unet = True

    def __init__(self, config):
        super().__init__(config)
        self.learning_rate = float(config.learning_rate)
        self.learning_rate_te = float(option(config, "learning_rate_te"))
        self.stop_te_step = int(option(config, "stop_text_encoder_training"))
        self.save_model_as = str(config.save_model_as)
        if self.save_model_as not in (*SINGLE_FILE, *DIFFUSERS):
            raise KindError(f"save_model_as {self.save_model_as!r} cannot hold a full model; choose safetensors, "
                            "ckpt, diffusers or diffusers_safetensors")
        self.train_te = self._wants_text_encoder()
        self.te_training = False
        self.param_groups: list[dict] = []
        if self.train_te and config.cache_text_encoder_outputs:
            raise KindError("cache_text_encoder_outputs needs frozen text encoders, but the text encoder trains "
                            f"in this run; turn it off or set {self._te_switch} so the text encoder stays frozen")

    _te_switch = "learning_rate_te to 0"

    def text_encoder_lr(self, index: int) -> float:
        """SDXL's second encoder may have its own rate (learning_rate_te2; empty = learning_rate_te)."""
        te2 = option(self.config, "learning_rate_te2")
        return float(te2) if index == 1 and te2 is not None else self.learning_rate_te

    def _wants_text_encoder(self) -> bool:
        return self.learning_rate_te > 0 or (option(self.config, "learning_rate_te2") or 0) > 0

    # ---- set-up ---------------------------------------------------------------------------------
    def prepare(self, base, train_dtype: torch.dtype = torch.float32) -> list[dict]:
        self.base = base
        base.vae.requires_grad_(False)
        cast_module(base.unet, train_dtype).requires_grad_(True)
        self.param_groups = self._unet_groups(base)
        for index, encoder in enumerate(base.text_encoders):
            encoder.requires_grad_(False)
            lr = self.text_encoder_lr(index)
            if self.train_te and lr > 0:
                cast_module(encoder, train_dtype).requires_grad_(True)
                self.param_groups.append({"params": [p for p in encoder.parameters()],
                                          "lr": lr, "name": f"text_encoder{index + 1}"})
        from trainer.models.dit import dit_family

        if self.train_te and dit_family(base.family) is not None:
            # sd-scripts' flux_train / sd3_train fine-tune the transformer only; its file holds no text encoders
            self._warn(f"{dit_family(base.family).label}: the text encoders are not fine-tuned (the saved file holds "
                       "the transformer only, as sd-scripts'); learning_rate_te is ignored")
            for encoder in base.text_encoders:
                encoder.requires_grad_(False)
            self.param_groups = [g for g in self.param_groups if g["name"].startswith("unet")]
            self.train_te = False
        self.te_training = self.train_te
        if base.family == "sdxl" and self.train_te:
            self._warn("training both SDXL text encoders: sd-scripts recommends keeping them frozen "
                       "(learning_rate_te 0) because their training is unpredictable")
        return self.param_groups

    def _unet_groups(self, base) -> list[dict]:
        """One group at learning_rate, or with block_lr (SDXL) one per U-Net block at its own rate."""
        rates = parse_block_lr(option(self.config, "block_lr"))
        if rates is not None and self.learning_rate == 0:  # sd-scripts: learning_rate 0 = the U-Net does not train
            self._warn("block_lr is not used: learning_rate is 0, so the U-Net does not train (as in sd-scripts)")
            rates = None
        if rates is None:
            return [{"params": list(base.unet.parameters()), "lr": self.learning_rate, "name": "unet"}]
        if base.family != "sdxl":
            raise KindError(f"block_lr splits the SDXL U-Net into its 23 blocks (sd-scripts has it in sdxl_train.py "
                            f"only), but the model is {FAMILY_NAMES.get(base.family, base.family)}; clear block_lr "
                            "or train an SDXL model")
        from .block_lr import block_lr_param_groups

        return block_lr_param_groups(base.unet, rates)

    def trained_modules(self) -> list[torch.nn.Module]:
        if self.base is None:
            return []
        return [self.base.unet, *(self.base.text_encoders if self.te_training else [])]

    # ---- per step -------------------------------------------------------------------------------
    def text_encoder_grad(self) -> bool:
        return self.te_training

    @property
    def text_encoder_trains(self) -> bool:
        return self.train_te

    def after_optimizer_step(self, global_step: int) -> None:
        """Freeze the text encoder(s) once stop_text_encoder_training steps are done."""
        if self.te_training and self.stop_te_step > 0 and global_step >= self.stop_te_step:
            for encoder in self.base.text_encoders:
                encoder.requires_grad_(False)
                encoder.eval()
                for p in encoder.parameters():
                    p.grad = None  # optimizers skip parameters without a gradient (no weight decay either)
            self.te_training = False

    # ---- output ---------------------------------------------------------------------------------
    @property
    def output_ext(self) -> str:
        return model_ext(self.config)

    def output_path(self, path: Path) -> Path:
        """``path`` with the suffix this kind writes (none for a diffusers folder)."""
        path = Path(path)
        stem = path.name[:-len(path.suffix)] if path.suffix in (".safetensors", ".ckpt", ".pt", ".diffusers",
                                                               ".diffusers_safetensors") else path.name
        return path.with_name(f"{stem}.{self.output_ext}" if self.output_ext else stem)

    def save(self, path: Path, *, step: int = 0, epoch: int = 0, metadata: dict | None = None) -> Path:
        """Write the whole model (trained U-Net/TE + the base VAE) at save_precision; returns the path."""
        from trainer.models import save_diffusers, save_single_file

        path = self.output_path(path)
        dtype = save_dtype(self.config.save_precision)
        if self.output_ext:
            meta = {"ss_training_type": self.name, "ss_steps": str(step), "ss_epoch": str(epoch)}
            meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
            return save_single_file(self.base, path, dtype=dtype, title=self._title(path), metadata=meta)
        # "diffusers" and "diffusers_safetensors" give the same folder: weights are always .safetensors
        return save_diffusers(self.base, path, dtype=dtype)

    def _title(self, path: Path) -> str:
        return str(self.config.metadata_title or path.stem)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"unet.{k}": v for k, v in self.base.unet.state_dict().items()}
        if self.train_te:
            for i, encoder in enumerate(self.base.text_encoders):
                out.update({f"te{i}.{k}": v for k, v in encoder.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.base.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        if self.train_te:
            for i, encoder in enumerate(self.base.text_encoders):
                prefix = f"te{i}."
                encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


class FinetuneKind(DreamboothKind):
    """Same training and outputs as DreamBooth; the data comes from Kohya's metadata JSON."""

    name = "finetune"
    _te_switch = "train_text_encoder off"

    def _wants_text_encoder(self) -> bool:
        if not option(self.config, "train_text_encoder"):
            return False
        if self.learning_rate_te <= 0:  # sd-scripts: no --learning_rate_te = the U-Net's rate
            self.learning_rate_te = self.learning_rate
        return True

    def scan_dataset(self, cfg=None, *, strict: bool = True, write: bool = True):
        """The ScanResult the loop trains on, read from in_json (built first when in_json is empty).
        Preflight/plan: ``scan_dataset(cfg, strict=False, write=False)`` reports instead of raising and
        writes nothing."""
        from .finetune_dataset import scan_metadata

        return scan_metadata(cfg if cfg is not None else self.config, strict=strict, write=write)
