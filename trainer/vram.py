"""A rough VRAM estimate for a run's settings (LoRA, or DreamBooth / fine-tuning of the whole denoiser), shown
by `plan` (and so by the GUI's preflight).

UNMEASURED: built from parameter counts and byte sizes, with an activation term per image token whose
constant is a guess; it has not been checked against measured peaks on a GPU yet (docs/benchmarks.md will
record them when a device is lent). Treat it as "will this obviously not fit", not as a promise.
Pure Python: the GUI may import it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from trainer.config.defaults import option

GIB = 2 ** 30
# parameters (billions): denoiser, text encoders (in order), autoencoder
PARAMS = {
    "sd1": (0.86, (0.123,), 0.084), "sd2": (0.87, (0.354,), 0.084), "sdxl": (2.57, (0.123, 0.695), 0.084),
    "flux": (11.9, (0.123, 4.76), 0.084), "sd3-medium": (2.5, (0.124, 0.695, 4.76), 0.084),
    "sd3-large": (8.1, (0.124, 0.695, 4.76), 0.084), "chroma": (8.9, (4.76,), 0.084),
}
# hidden width × blocks (activation scale) and pixels per token side
SHAPE = {"sd1": (320 * 16, 8), "sd2": (320 * 16, 8), "sdxl": (640 * 20, 8), "flux": (3072 * 57, 16),
         "sd3-medium": (1536 * 24, 16), "sd3-large": (2432 * 38, 16),
         "chroma": (3072 * 57, 16)}
BLOCKS = {"flux": 57, "chroma": 57, "sd3-medium": 24, "sd3-large": 38}  # what blocks_to_swap counts
ACT_BYTES_PER_UNIT = 2 * 6   # bf16 × tensors kept per block and token without checkpointing (a guess)
CHECKPOINT_SHARE = 0.12      # what full gradient checkpointing keeps of that (a guess)
FULL_TRAINING = ("dreambooth", "finetune")  # the denoiser's own weights train


@dataclass
class VramEstimate:
    total_gb: float
    weights_gb: float
    text_encoders_gb: float
    lora_and_optimizer_gb: float  # what trains: the LoRA and its optimizer state; full training: gradients + state
    activations_gb: float
    measured: bool = False
    note: str = "unmeasured estimate (parameter counts and a guessed activation term); not checked on a GPU"

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_vram(family: str, cfg, variant: str = "") -> VramEstimate | None:
    key = f"{family}-{variant or 'large'}" if family == "sd3" else family
    if key not in PARAMS:
        return None
    denoiser, tes, ae = PARAMS[key]
    mixed = cfg.mixed_precision
    wide = 4 if mixed == "no" else 2
    wbytes = 1 if option(cfg, "fp8_base") or option(cfg, "fp8_base_unet") else wide
    te_bytes = 1 if option(cfg, "fp8_base") and not option(cfg, "fp8_base_unet") else wide
    swapped = min(int(cfg.blocks_to_swap), BLOCKS.get(key, 1) - 1) / BLOCKS.get(key, 1)
    weights = denoiser * 1e9 * wbytes * (1 - swapped) + ae * 1e9 * 2  # swapped blocks wait in host memory
    cached = bool(cfg.cache_text_encoder_outputs)
    te = 0.0 if cached else sum(tes) * 1e9 * te_bytes  # cached: the encoders leave the GPU before step 1
    rank = int(option(cfg, "network_dim"))
    width, blocks_px = SHAPE[key]
    lora_params = rank * width * 6  # down + up over the targeted layers (~6 per block width unit)
    opt_bytes = 2 if "8bit" in str(cfg.optimizer) else 8
    lora = lora_params * (4 + 4 + opt_bytes)
    w, h = _resolution(cfg.resolution)
    tokens = (w // blocks_px) * (h // blocks_px) * int(cfg.train_batch_size)
    act = tokens * width * ACT_BYTES_PER_UNIT
    if cfg.gradient_checkpointing:
        # cpu_offload_checkpointing: the blocks' kept inputs wait in host memory; one block's recompute remains
        act *= 1 / BLOCKS.get(key, 20) if cfg.cpu_offload_checkpointing else CHECKPOINT_SHARE
    if cfg.training_type in FULL_TRAINING:
        weights, lora = _full_training(cfg, key, denoiser * 1e9)
        weights += ae * 1e9 * 2
    total = weights + te + lora + act + 0.6 * GIB  # CUDA context and allocator slack
    return VramEstimate(round(total / GIB, 1), round(weights / GIB, 1), round(te / GIB, 1), round(lora / GIB, 2),
                        round(act / GIB, 1))


def _full_training(cfg, key: str, n: float) -> tuple[float, float]:
    """(denoiser weight bytes, gradient + optimizer bytes) when all its n parameters train."""
    pbytes = 2 if cfg.full_bf16 or cfg.full_fp16 else 4  # trained weights stay fp32 unless full_bf16/fp16
    grads = n * pbytes
    if cfg.fused_backward_pass:  # each gradient is freed as soon as its weight is updated: about one block's
        grads /= BLOCKS.get(key, 20)
    # Adafactor keeps factored second moments (rows + columns: next to nothing) and no first moment by default
    state = 0.0 if cfg.optimizer == "Adafactor" else (2 if "8bit" in cfg.optimizer else 8)
    return n * pbytes, grads + n * state


def _resolution(value) -> tuple[int, int]:
    parts = [p for p in str(value).replace("x", ",").split(",") if p.strip()]
    w = int(parts[0])
    return w, int(parts[1]) if len(parts) > 1 else w


def header_keys(path) -> list[str]:
    """Tensor names of a .safetensors file from its JSON header (no tensors read, no torch)."""
    import json
    import struct
    from pathlib import Path

    p = Path(path)
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return []
    with p.open("rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        return [k for k in json.loads(fh.read(n)) if k != "__metadata__"]


def config_family(cfg) -> tuple[str | None, str]:
    """(family, variant) from the config's checkboxes, else from the model file's keys."""
    from trainer.families import family_from_keys

    keys = []
    if cfg.flux1_checkbox:
        family = "chroma" if cfg.model_type == "chroma" else "flux"
    elif cfg.sd3_checkbox:
        family = None
    elif cfg.sdxl:
        return "sdxl", ""
    elif cfg.v2:
        return "sd2", ""
    else:
        family = None
    if family is None or cfg.sd3_checkbox:
        keys = header_keys(cfg.pretrained_model_name_or_path)
        family = family_from_keys(keys) or ("sd3" if cfg.sd3_checkbox else None)
    variant = ("medium" if any(".attn2." in k for k in keys) else "large") if family == "sd3" else ""
    return family, variant
