"""Build diffusers/transformers modules and schedulers from a config folder."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from trainer.models.registry import TOKENIZER_FOLDERS, Architecture


def build_components_from_config(arch: Architecture, *, empty: bool = False,
                                 tokenizer_cache_dir: Path | None = None) -> dict:
    """Modules of ``arch`` with freshly initialised weights (``empty=True``: parameters on the meta
    device, to be filled with ``load_state_dict(assign=True)`` — no throw-away allocation)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    ctx = init_empty_weights if empty else nullcontext
    components: dict = {}
    with ctx():
        components["unet"] = UNet2DConditionModel.from_config(arch.config("unet"))
        components["vae"] = AutoencoderKL.from_config(arch.config("vae"))
        for folder in arch.text_encoder_folders:
            components[folder] = build_text_encoder(arch.config(folder))
    components.update(build_tokenizers(arch, tokenizer_cache_dir=tokenizer_cache_dir))
    components["scheduler"] = build_pipeline_scheduler(arch)
    return components


def build_text_encoder(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in config.get("architectures", []) else CLIPTextModel
    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")})
    cfg.architectures = [cls.__name__]
    return cls(cfg)


def build_tokenizers(arch: Architecture, *, tokenizer_cache_dir: Path | None = None) -> dict:
    from trainer.models.tokenizers import load_tokenizer

    out = {}
    for te_folder, tok_folder in zip(arch.text_encoder_folders, TOKENIZER_FOLDERS):
        out[tok_folder] = load_tokenizer(arch.path / tok_folder, arch.tokenizers.get(tok_folder),
                                         tokenizer_cache_dir=tokenizer_cache_dir)
    return out


def build_pipeline_scheduler(arch: Architecture, prediction_type: str | None = None):
    """The inference scheduler named in the config folder (PNDM / DDIM / Euler ...)."""
    import diffusers

    cfg = arch.config("scheduler")
    cls = getattr(diffusers, cfg.get("_class_name", "PNDMScheduler"))
    if prediction_type:
        cfg = {**cfg, "prediction_type": prediction_type}
    return cls.from_config(cfg)


def build_noise_scheduler(v_prediction: bool):
    """The training scheduler Kohya uses for every SD family: scaled-linear DDPM, 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False,
                         prediction_type="v_prediction" if v_prediction else "epsilon")
