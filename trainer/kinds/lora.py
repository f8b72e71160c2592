"""LoRA as a training kind: the same interface as the other kinds (DreamBooth, fine-tune, TI), so one
loop drives every training type. What trains is a kohya LoRA network patched into the base model."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.atomic import atomic_path
from trainer.output_names import model_ext

from .base import KindError, TrainingKind

logger = logging.getLogger(__name__)


class LoraKind(TrainingKind):
    name = "lora"

    def __init__(self, config):
        super().__init__(config)
        self.network = None
        self.param_groups: list[dict] = []
        self.last_verified: bool | None = None

    # ---- set-up ---------------------------------------------------------------------------------
    def prepare(self, base, train_dtype: torch.dtype = torch.float32) -> list[dict]:
        from trainer.networks.registry import build_network

        cfg, self.base = self.config, base
        if base.family not in ("sd1", "sd2") and cfg.cache_text_encoder_outputs and \
                not cfg.network_train_unet_only:
            self.warnings.append("cache_text_encoder_outputs needs U-Net-only training; the text-encoder LoRA "
                                 "is not trained.")
            cfg = _with(cfg, network_train_unet_only=True)
        try:
            network = build_network(base, cfg)  # the LoRA_type's builder (trainer/networks/registry.py)
        except ValueError as e:
            raise KindError(str(e), "Change the network options named in the message.") from e
        network.apply_to()
        device = next(base.unet.parameters()).device
        network.to(device, dtype=train_dtype)
        self.network = network
        ratios = {k: (getattr(cfg, k) or None) for k in
                  ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")}
        self.param_groups = network.prepare_optimizer_params(cfg.text_encoder_lr,
                                                             cfg.unet_lr, cfg.learning_rate,
                                                             **ratios)
        if not self.param_groups:
            raise KindError("Every learning rate is 0, so nothing would be trained.",
                                "Set learning_rate (or unet_lr / text_encoder_lr) above 0.")
        return self.param_groups

    def after_optimizer_step(self, global_step: int) -> None:
        """`scale_weight_norms`: sd-scripts' max-norm regularisation after every optimizer step."""
        limit = float(self.config.scale_weight_norms)
        if limit > 0:
            scaled, mean, largest = self.network.apply_max_norm_regularization(limit)
            self.max_norm_stats = {"keys_scaled": scaled, "average_key_norm": mean, "max_key_norm": largest}

    def network_metadata(self) -> dict[str, str]:
        """The `ss_*` keys sd-scripts adds for LoRA+ and max-norm (only when set)."""
        c, meta = self.config, {}
        for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                    "scale_weight_norms"):
            if getattr(c, key):
                meta[f"ss_{key}"] = str(getattr(c, key))
        return meta

    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.network]

    # ---- per step -------------------------------------------------------------------------------
    @property
    def text_encoder_trains(self) -> bool:
        return any(g.get("name", "").startswith("textencoder") for g in self.param_groups)

    def text_encoder_grad(self) -> bool:
        return self.text_encoder_trains

    # ---- output ---------------------------------------------------------------------------------
    @property
    def output_ext(self) -> str:
        return model_ext(self.config)

    def save(self, path: Path, *, step: int = 0, epoch: int = 0, metadata: dict | None = None) -> Path:
        from trainer.networks import verify_lora_file
        from trainer.networks.files import prepare_tensors, resolve_save_dtype

        path = Path(path)
        dtype = self.config.save_precision
        if path.suffix == ".safetensors" and self.config.save_lora_format == "diffusers":
            from trainer.networks.peft_layout import save_peft_file

            self.last_verified = None  # the self-check reads kohya names
            return save_peft_file(path, self.network, self.base, resolve_save_dtype(dtype),
                                  {**self.network.default_metadata(path.stem), **(metadata or {})})
        if path.suffix == ".safetensors":
            self.network.save_weights(path, dtype, {**self.network_metadata(), **(metadata or {})})
            report = verify_lora_file(path, self.base)
            self.last_verified = report.ok
            if not report.ok:
                self.warnings.append(f"{path.name} failed its self-check: {report.to_text()}")
            return path
        # ckpt / pt: a plain tensor dict, as sd-scripts writes them
        with atomic_path(path) as tmp:
            torch.save(prepare_tensors(self.network.state_dict(), resolve_save_dtype(dtype)), tmp)
        self.last_verified = None
        return path

    def state_dict(self) -> dict[str, torch.Tensor]:
        if hasattr(self.network, "training_state"):  # LyCORIS: the file layout does not load back everywhere
            return self.network.training_state()
        return self.network.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if hasattr(self.network, "load_training_state"):
            self.network.load_training_state(state)
        else:
            self.network.load_state_dict(state, strict=True)


def _with(config, **changes):
    """A copy of the config with some values changed (the user's config object stays as it was)."""
    return config.model_copy(update=changes) if hasattr(config, "model_copy") else config

