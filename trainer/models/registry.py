"""Known architectures: the diffusers config folders shipped in ``configs/models/``.

Each folder is a config-only diffusers layout (``model_index.json``, ``unet/config.json``,
``vae/config.json``, ``text_encoder[_2]/config.json``, ``scheduler/scheduler_config.json``, and for the
tiny test models the tokenizer files) plus ``architecture.json`` (family, default prediction type,
where the tokenizers come from).  Single-file checkpoints carry no configs, so the loader picks the
folder whose shapes match the checkpoint's tensors (``match_architecture``); a folder passed by the
user (``config_dir``) is used as-is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

FAMILIES = ("sd1", "sd2", "sdxl")
DENOISER_FOLDERS = ("unet", "transformer")  # U-Net families / DiT families (trainer/models/dit.py)
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs" / "models"
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")


@dataclass(frozen=True)
class Architecture:
    name: str
    path: Path
    family: str
    prediction_type: str
    description: str
    tiny: bool = False
    tokenizers: dict = field(default_factory=dict)  # folder -> {"source": hub id, "pad_token": ...}
    variant: str = ""  # DiT families: e.g. FLUX.1 "dev" / "schnell"

    def config(self, sub: str) -> dict:
        name = "scheduler_config.json" if sub == "scheduler" else "config.json"
        return _read_json(self.path / sub / name)

    @property
    def text_encoder_folders(self) -> list[str]:
        return [s for s in TEXT_ENCODER_FOLDERS if (self.path / s / "config.json").is_file()]

    def signature(self) -> dict:
        """Shape facts a checkpoint must agree with (see ``checkpoint_signature``)."""
        unet = self.config("unet")
        channels = list(unet["block_out_channels"])
        levels = len(channels)
        return {
            "unet_channels": list(dict.fromkeys(channels)),
            "in_channels": unet["in_channels"],
            "context_dim": unet["cross_attention_dim"],
            "input_blocks": 1 + levels * unet["layers_per_block"] + (levels - 1),
            "text_hidden": [self.config(s)["hidden_size"] for s in self.text_encoder_folders],
        }


def read_architecture(path: Path) -> Architecture:
    """Read a config folder; ``architecture.json`` is optional for user folders (family is inferred)."""
    path = Path(path)
    info_file = path / "architecture.json"
    info = _read_json(info_file) if info_file.is_file() else {}
    if not any((path / sub / "config.json").is_file() for sub in DENOISER_FOLDERS):
        raise FileNotFoundError(
            f"{path} is not a diffusers config folder: unet/config.json is missing. A config folder needs "
            "model_index.json, unet/config.json, vae/config.json, text_encoder/config.json and scheduler/.")
    family = info.get("family") or _family_from_folder(path)
    prediction = info.get("prediction_type")
    if prediction is None:
        sched = path / "scheduler" / "scheduler_config.json"
        prediction = _read_json(sched).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    return Architecture(name=path.name, path=path, family=family, prediction_type=prediction,
                        description=info.get("description", str(path)), tiny=bool(info.get("tiny")),
                        tokenizers=info.get("tokenizers", {}), variant=info.get("variant", ""))


@lru_cache(maxsize=1)
def known_architectures() -> tuple[Architecture, ...]:
    return tuple(read_architecture(p) for p in sorted(CONFIG_ROOT.iterdir()) if (p / "architecture.json").is_file())


def get_architecture(name: str) -> Architecture:
    for arch in known_architectures():
        if arch.name == name:
            return arch
    raise KeyError(f"no architecture {name!r} in {CONFIG_ROOT}; known: {[a.name for a in known_architectures()]}")


def checkpoint_signature(shapes: dict[str, tuple], family: str) -> dict:
    """The same facts as ``Architecture.signature`` read from original-layout tensor shapes."""
    unet = "model.diffusion_model."
    conv_in = shapes.get(unet + "input_blocks.0.0.weight")
    blocks = {int(k.split(".")[3]) for k in shapes if k.startswith(unet + "input_blocks.")}
    res_channels = []
    for i in sorted(blocks):
        w = shapes.get(f"{unet}input_blocks.{i}.0.out_layers.3.weight")
        if w is not None and w[0] not in res_channels:
            res_channels.append(w[0])
    context = next((s[1] for k, s in sorted(shapes.items()) if k.startswith(unet) and k.endswith("attn2.to_k.weight")), None)
    text_keys = {
        "sd1": ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"],
        "sd2": ["cond_stage_model.model.token_embedding.weight"],
        "sdxl": ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                 "conditioner.embedders.1.model.token_embedding.weight"],
    }[family]
    return {
        "unet_channels": res_channels,
        "in_channels": conv_in[1] if conv_in else None,
        "context_dim": context,
        "input_blocks": len(blocks),
        "text_hidden": [shapes[k][1] for k in text_keys if k in shapes],
    }


def match_architecture(shapes: dict[str, tuple], family: str) -> Architecture | None:
    """The registered architecture of ``family`` whose signature equals the checkpoint's, if any."""
    sig = checkpoint_signature(shapes, family)
    for arch in known_architectures():
        if arch.family != family:
            continue
        want = arch.signature()
        if sig["text_hidden"] == []:  # a U-Net-only file: compare what is there
            want = {**want, "text_hidden": []}
        if want == sig:
            return arch
    return None


def _family_from_folder(path: Path) -> str:
    if (path / "unet" / "config.json").is_file():
        return _family_from_unet_config(_read_json(path / "unet" / "config.json"))
    from trainer.models.dit import family_from_transformer_config

    return family_from_transformer_config(_read_json(path / "transformer" / "config.json"), path)


def _family_from_unet_config(unet: dict) -> str:
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if unet.get("use_linear_projection") else "sd1"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it from the project's configs/models") from exc
