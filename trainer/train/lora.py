"""LoRA as a training kind: the same interface as trainer.kinds (DreamBooth, fine-tune, TI), so one
loop drives every training type. What trains is a kohya LoRA network patched into the base model."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.atomic import atomic_path
from trainer.kinds.base import TrainingKind

from .faults import TrainingFault

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
        from trainer.networks import create_network, create_network_from_weights
        from trainer.networks.naming import target_filter_for

        cfg, self.base = self.config, base
        unet_only = bool(getattr(cfg, "network_train_unet_only", False))
        te_only = bool(getattr(cfg, "network_train_text_encoder_only", False))
        if base.family != "sd1" and base.family != "sd2" and getattr(cfg, "cache_text_encoder_outputs", False) \
                and not unet_only:
            self.warnings.append("cache_text_encoder_outputs needs U-Net-only training; the text-encoder LoRA "
                                 "is not trained.")
            unet_only = True
        locon = getattr(cfg, "LoRA_type", "Standard") == "Kohya LoCon"
        dropouts = dict(dropout=getattr(cfg, "network_dropout", 0) or None,
                        rank_dropout=getattr(cfg, "rank_dropout", 0) or None,
                        module_dropout=getattr(cfg, "module_dropout", 0) or None)
        weights = getattr(cfg, "network_weights", "") or ""
        if weights and getattr(cfg, "dim_from_weights", False):
            network = create_network_from_weights(weights, base, **dropouts)
        else:
            network = create_network(base, network_dim=cfg.network_dim, network_alpha=cfg.network_alpha,
                                     conv_dim=cfg.conv_dim if locon else 0,
                                     conv_alpha=cfg.conv_alpha if locon else None,
                                     train_unet=not te_only, train_text_encoder=not unet_only,
                                     target_filter=target_filter_for(base.family, cfg), **dropouts)
            if weights:
                result = network.load_weights(weights)
                logger.info("continuing from %s: %d modules loaded", weights, len(result.loaded))
        network.apply_to()
        device = next(base.unet.parameters()).device
        network.to(device, dtype=train_dtype)
        self.network = network
        self.param_groups = network.prepare_optimizer_params(getattr(cfg, "text_encoder_lr", None),
                                                             getattr(cfg, "unet_lr", None), cfg.learning_rate)
        if not self.param_groups:
            raise TrainingFault("Every learning rate is 0, so nothing would be trained.",
                                "Set learning_rate (or unet_lr / text_encoder_lr) above 0.")
        return self.param_groups

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
        return getattr(self.config, "save_model_as", "safetensors") or "safetensors"

    def save(self, path: Path, *, step: int = 0, epoch: int = 0, metadata: dict | None = None) -> Path:
        from trainer.networks import verify_lora_file
        from trainer.networks.files import prepare_tensors, resolve_save_dtype

        path = Path(path)
        dtype = getattr(self.config, "save_precision", None) or None
        if path.suffix == ".safetensors" and getattr(self.config, "save_lora_format", "kohya") == "diffusers":
            from trainer.networks.peft_layout import save_peft_file

            self.last_verified = None  # the self-check reads kohya names
            return save_peft_file(path, self.network, self.base, resolve_save_dtype(dtype),
                                  {**self.network.default_metadata(path.stem), **(metadata or {})})
        if path.suffix == ".safetensors":
            self.network.save_weights(path, dtype, metadata or {})
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
        return self.network.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(state, strict=True)


def create_training_kind(config):
    """LoRA here; the other training types come from trainer.kinds."""
    if getattr(config, "training_type", "lora") == "lora":
        return LoraKind(config)
    from trainer.kinds import create_kind

    return create_kind(config)
