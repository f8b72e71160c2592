"""The LoRA network: builds kohya's LoRA / LoCon modules on a base model, trains, saves, loads, merges.

Typical training use:

    net = create_network(base, network_dim=16, network_alpha=8, conv_dim=8, conv_alpha=1)
    net.apply_to()                                   # base forwards now add the LoRA branch
    opt = AdamW(net.prepare_optimizer_params(text_encoder_lr, unet_lr, learning_rate))
    ...
    net.save_weights("out/name.safetensors", "fp16", metadata)

Continue training from a file: `net.load_weights(path)` (same ranks) or, with
`dim_from_weights`, `create_network_from_weights(path, base)` (ranks read from the file).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .files import (
    LoRAFileError, modelspec_metadata, network_metadata, read_lora_file, read_lora_source, save_lora_file,
)
from .fused_lora import make_lora_module
from .lora_module import LoRAModule
from .naming import Target, all_targets, resolve_base, split_key  # noqa: F401  (resolve_base: public name)
from .blocks import block_dims_alphas, block_index, block_lr_weights
from .checks import build_name_map, check_state_dict
from .params import network_param_groups
from .patched import PatchedNetwork

logger = logging.getLogger(__name__)

DEFAULT_NETWORK_DIM = 4  # sd-scripts' networks.lora default when network_dim is not given


def is_missing_alpha(problem: str) -> bool:
    return ": missing .alpha" in problem


@dataclass
class LoadResult:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # network modules the file has no weights for
    ignored: list[str] = field(default_factory=list)  # file modules this network does not train
    metadata: dict[str, str] = field(default_factory=dict)


class LoRANetwork(PatchedNetwork, nn.Module):
    def __init__(self, family: str, catalog: Sequence[Target], loras: Sequence[LoRAModule], parts: Mapping[str, str],
                 settings: Mapping[str, Any]):
        super().__init__()
        self.family = family
        self.catalog = list(catalog)  # every module a file for this base may name (not submodules)
        self.parts = dict(parts)  # lora_name → "unet" / "te" / "te1" / "te2"
        self.settings = dict(settings)  # network_dim, network_alpha, conv_dim, ... for metadata
        self.multiplier = float(settings.get("multiplier", 1.0))
        for lora in loras:
            self.add_module(lora.lora_name, lora)

    # --- structure ------------------------------------------------------------------------

    @property
    def loras(self) -> list[LoRAModule]:
        return [m for m in self.children() if isinstance(m, LoRAModule)]

    # unet_loras / text_encoder_loras, apply_to / restore, set_multiplier: PatchedNetwork (patched.py)

    # --- merging --------------------------------------------------------------------------

    @property
    def merged(self) -> bool:
        return any(lora.merged_multiplier is not None for lora in self.loras)

    def merge_to(self, multiplier: float | None = None) -> None:
        """W += multiplier·scale·up@down in every wrapped layer (what A1111/ComfyUI/merge_lora do)."""
        for lora in self.loras:
            lora.merge_to(multiplier)

    def unmerge(self) -> None:
        """Subtract exactly what merge_to added."""
        for lora in self.loras:
            lora.unmerge()

    # --- optimisation ---------------------------------------------------------------------

    def prepare_optimizer_params(self, text_encoder_lr, unet_lr, default_lr, loraplus_lr_ratio: float | None = None,
                                 loraplus_unet_lr_ratio: float | None = None,
                                 loraplus_text_encoder_lr_ratio: float | None = None):
        """Parameter groups: text encoder(s) and U-Net at their own rates, LoRA+ and block-wise rates
        as sd-scripts makes them (see params.py)."""
        block_lr = self.settings.get("block_lr_weights")
        return network_param_groups(
            self.loras, self.parts, text_encoder_lr, unet_lr, default_lr, loraplus_lr_ratio=loraplus_lr_ratio,
            loraplus_unet_lr_ratio=loraplus_unet_lr_ratio,
            loraplus_text_encoder_lr_ratio=loraplus_text_encoder_lr_ratio,
            block_of=lambda name: block_index(name, self.family), block_lr=block_lr)

    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm_value: float):
        """`scale_weight_norms`: shrink modules whose ‖ΔW‖ exceeds the limit.
        Returns (modules scaled, mean norm, max norm) like sd-scripts."""
        scaled, norms = 0, []
        for lora in self.loras:
            norm = lora.delta_weight(1.0).norm()
            ratio = min(1.0, max_norm_value / max(float(norm), 1e-12))
            if ratio < 1.0:
                scaled += 1
                lora.scale_weights_(ratio ** 0.5)
            norms.append(float(norm) * ratio)
        return scaled, (sum(norms) / len(norms) if norms else 0.0), max(norms, default=0.0)

    # --- files ----------------------------------------------------------------------------

    def default_metadata(self, title: str = "") -> dict[str, str]:
        s = self.settings
        meta = network_metadata(
            self.family, s.get("network_dim"), s.get("network_alpha"), s.get("conv_dim") or 0,
            s.get("conv_alpha") or 0, s.get("dropout"), s.get("rank_dropout"), s.get("module_dropout"),
            bool(s.get("v_prediction")), extra_args=s.get("extra_args"),
        )
        if s.get("network_module", "networks.lora") != "networks.lora":  # DyLoRA; a DiT family keeps its own
            meta["ss_network_module"] = s["network_module"]
        meta.update(modelspec_metadata(self.family, title, v_prediction=bool(s.get("v_prediction"))))
        return meta

    def save_weights(self, path, dtype=None, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Atomically write the kohya-format file; the trainer's metadata overrides the defaults."""
        metadata = dict(metadata or {})
        title = str(metadata.get("ss_output_name") or Path(path).stem)
        meta = {**self.default_metadata(title), **metadata}
        return save_lora_file(path, self.state_dict(), meta, dtype)

    def load_weights(self, path_or_state, metadata: Mapping[str, str] | None = None) -> LoadResult:
        """Load a kohya-format file (path) or state dict into this network.

        Raises LoRAFileError naming the problem when the file is for another base model, names
        modules the base does not have, or has ranks that differ from this network's (then
        `dim_from_weights` is the fix)."""
        if self.merged:
            raise RuntimeError("unmerge() the network before loading new weights into it")
        state, meta, source = read_lora_source(path_or_state, metadata)
        state = canonical_state_dict(state, meta, self.catalog, self.family, source)
        require_plain_lora(state, source)

        own = {m.lora_name: m for m in self.loras}
        result = LoadResult(metadata=meta)
        to_load = {}
        rank_problems = []
        for key, value in state.items():
            name, suffix = split_key(key)
            if name not in own:
                if name not in result.ignored:
                    result.ignored.append(name)
                continue
            if suffix == "lora_down.weight" and value.shape[0] != own[name].lora_dim:
                rank_problems.append(f"{name}: rank {value.shape[0]} in the file, {own[name].lora_dim} in the network")
            to_load[key] = value
        if rank_problems:
            raise LoRAFileError(
                f"{source}: ranks differ from this network ({len(rank_problems)} modules, e.g. {rank_problems[0]}). "
                "Set network_dim/conv_dim to the file's ranks or turn on dim_from_weights."
            )
        for name in own:
            if f"{name}.lora_down.weight" not in to_load:
                result.missing.append(name)
            else:
                result.loaded.append(name)
                to_load.setdefault(f"{name}.alpha", torch.tensor(float(own[name].lora_dim)))
        self.load_state_dict(to_load, strict=False)
        if result.ignored:
            logger.warning("%s: %d modules in the file are not trained by this network and were ignored",
                           source, len(result.ignored))
        if result.missing:
            logger.warning("%s: %d network modules have no weights in the file and keep their initial values",
                           source, len(result.missing))
        return result


def require_plain_lora(state: Mapping[str, torch.Tensor], source: str) -> None:
    """A LyCORIS file (LoHa, LoKr, DoRA, ...) cannot continue a plain LoRA: say which type it is."""
    from .lycoris_checks import adapter_of, is_plain_lora

    by_module: dict[str, set] = {}
    for key in state:
        name, suffix = split_key(key)
        by_module.setdefault(name, set()).add(suffix)
    other = next((s for s in by_module.values() if not is_plain_lora(s)), None)
    if other is not None:
        kind = adapter_of(other) or "LyCORIS"
        extra = " with DoRA (dora_wd)" if "dora_scale" in other else ""
        raise LoRAFileError(f"{source} is a {kind}{extra} file, not a plain LoRA: pick the LoRA_type it was "
                            "trained with (LyCORIS/...) to continue from it")


def canonical_state_dict(state, metadata, catalog, family, source) -> dict[str, torch.Tensor]:
    """Check a file against the base (clear error if it does not fit) and rename accepted
    alternative spellings to kohya's names."""
    report = check_state_dict(state, metadata, catalog, family, source)
    fatal = [p for p in report.problems if not is_missing_alpha(p)]
    if fatal:
        shown = "\n  ".join(fatal[:8]) + (f"\n  ... {len(fatal) - 8} more" if len(fatal) > 8 else "")
        fix = ""
        if fatal[0].startswith("wrong base model") and report.file_family:
            fix = f"\nUse this LoRA with a {report.file_family} base model, or pick a LoRA made for {family}."
        raise LoRAFileError(f"{source} does not fit this {family} base model:\n  {shown}{fix}")
    name_map = build_name_map(catalog, family)
    out = {}
    for key, value in state.items():
        name, suffix = split_key(key)
        out[f"{name_map[name].lora_name}.{suffix}"] = value
    return out


def create_network(
    unet_or_base,
    text_encoders=None,
    family: str | None = None,
    network_dim: int | None = DEFAULT_NETWORK_DIM,
    network_alpha: float | None = 1.0,
    conv_dim: int | None = 0,
    conv_alpha: float | None = None,
    dropout: float | None = 0,
    rank_dropout: float | None = 0,
    module_dropout: float | None = 0,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    multiplier: float = 1.0,
    module_dims: Mapping[str, int] | None = None,
    module_alphas: Mapping[str, float] | None = None,
    v_prediction: bool | None = None,
    blocks: Mapping[str, Any] | None = None,
    module_class: type = LoRAModule,
    module_kwargs: Mapping[str, Any] | None = None,
    network_module: str = "networks.lora",
    extra_args: Mapping[str, Any] | None = None,
    target_filter=None,
) -> LoRANetwork:
    """Build (not yet apply) kohya's LoRA network on a base model.

    `unet_or_base`: a `BaseModel`, a tiny-component dict (with `family` or pass it) or the U-Net
    itself with `text_encoders` and `family`. `conv_dim` > 0 adds LoCon on ResNet and
    down/upsampler blocks; `conv_alpha` defaults to 1 then, as in sd-scripts.
    `module_dims`/`module_alphas` (kohya names) give per-module ranks instead (dim_from_weights).
    `blocks`: the kohya block-wise strings (`block_dims`, `block_alphas`, `conv_block_dims`,
    `conv_block_alphas`, `down_lr_weight`, `mid_lr_weight`, `up_lr_weight`, `block_lr_zero_threshold`);
    modules of blocks whose lr weight is 0 are left out, as sd-scripts does.
    `module_class`/`module_kwargs`/`network_module`: another module with LoRA's keys (Kohya DyLoRA).
    `target_filter(target) -> bool` narrows a new network (a family's options: FLUX train_blocks).
    """
    unet, tes, fam = resolve_base(unet_or_base, text_encoders, family)
    if v_prediction is None:
        v_prediction = bool(getattr(unet_or_base, "v_prediction", False))
    network_dim = DEFAULT_NETWORK_DIM if network_dim is None else int(network_dim)
    if network_dim < 1 and module_dims is None:
        raise ValueError(f"network_dim must be >= 1, got {network_dim}")
    conv_dim = int(conv_dim or 0)
    if conv_dim and conv_alpha is None:
        conv_alpha = 1.0
    catalog = all_targets(unet, tes, fam, include_conv_blocks=True)
    b = dict(blocks or {})
    bd, ba, cbd, cba = block_dims_alphas(fam, b.get("block_dims", ""), b.get("block_alphas", ""),
                                         b.get("conv_block_dims", ""), b.get("conv_block_alphas", ""),
                                         network_alpha if network_alpha is not None else 1.0, conv_alpha)
    block_lr = block_lr_weights(fam, b.get("down_lr_weight", ""), b.get("mid_lr_weight", ""),
                                b.get("up_lr_weight", ""), b.get("block_lr_zero_threshold", ""))

    def block_rank(t):
        """(dim, alpha) of a U-Net module under block_dims / block lr weights; dim 0 = leave it out."""
        idx = block_index(t.lora_name, fam)
        if block_lr is not None and 0 <= idx < len(block_lr) and block_lr[idx] == 0:
            return 0, None
        if bd is None:
            return (conv_dim, conv_alpha) if t.is_conv3x3 else (network_dim, network_alpha)
        if t.is_conv3x3:
            return (cbd[idx], cba[idx]) if cbd is not None else (0, None)
        return bd[idx], ba[idx]

    loras, parts = [], {}
    common = dict(multiplier=multiplier, dropout=dropout, rank_dropout=rank_dropout, module_dropout=module_dropout,
                  **dict(module_kwargs or {}))
    for t in catalog:
        if module_dims is not None:
            if t.lora_name not in module_dims:
                continue
            dim = module_dims[t.lora_name]
            alpha = (module_alphas or {}).get(t.lora_name)
        else:
            if (t.part == "unet" and not train_unet) or (t.part != "unet" and not train_text_encoder):
                continue
            if target_filter is not None and not target_filter(t):
                continue
            if t.is_conv_block and not (conv_dim if bd is None else cbd is not None):
                continue  # sd-scripts only targets ResNet/sampler blocks with conv_dim (conv_block_dims)
            if t.part == "unet":
                dim, alpha = block_rank(t)
            else:
                dim, alpha = network_dim, network_alpha
            if not dim:
                continue
        # LoRAModule targets: kohya's class, or the fused one where a DiT family packs several linears
        loras.append(make_lora_module(t, dim, alpha, **common) if module_class is LoRAModule
                     else module_class(t.lora_name, t.module, dim, alpha, **common))
        parts[t.lora_name] = t.part
    if not loras:
        raise ValueError("the LoRA network has no modules: enable the U-Net and/or the text encoder")
    counts = Counter(parts.values())
    logger.info("LoRA network for %s: %s", fam, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    settings = dict(network_dim=network_dim, network_alpha=network_alpha, conv_dim=conv_dim, conv_alpha=conv_alpha,
                    dropout=dropout, rank_dropout=rank_dropout, module_dropout=module_dropout,
                    multiplier=multiplier, v_prediction=v_prediction, block_lr_weights=block_lr,
                    network_module=network_module, extra_args=dict(extra_args or {}))
    return LoRANetwork(fam, catalog, loras, parts, settings)


def create_network_from_weights(path, unet_or_base, text_encoders=None, family: str | None = None,
                                multiplier: float = 1.0, **options) -> LoRANetwork:
    """A network shaped by a saved file (`dim_from_weights`): each module's rank and alpha come
    from the file, and its weights are loaded. Not applied yet: call `apply_to()` or `merge_to()`.
    `options`: create_network's dropouts and module class (a LoRA-FA or DyLoRA network)."""
    unet, tes, fam = resolve_base(unet_or_base, text_encoders, family)
    state, meta = read_lora_file(path)
    catalog = all_targets(unet, tes, fam, include_conv_blocks=True)
    state = canonical_state_dict(state, meta, catalog, fam, str(path))
    require_plain_lora(state, str(path))
    dims, alphas = {}, {}
    for key, value in state.items():
        name, suffix = split_key(key)
        if suffix == "lora_down.weight":
            dims[name] = int(value.shape[0])
        elif suffix == "alpha":
            alphas[name] = float(value)
    net = create_network(unet_or_base, text_encoders, fam, multiplier=multiplier, module_dims=dims,
                         module_alphas=alphas, **options)
    # keep what the file said about itself, for metadata when it is saved again
    common_dim = Counter(dims.values()).most_common(1)[0][0]
    net.settings["network_dim"] = _meta_number(meta.get("ss_network_dim"), common_dim)
    net.settings["network_alpha"] = _meta_number(meta.get("ss_network_alpha"), alphas.get(next(iter(dims))))
    args = _meta_args(meta.get("ss_network_args"))
    net.settings["conv_dim"] = _meta_number(args.get("conv_dim"), 0)
    net.settings["conv_alpha"] = _meta_number(args.get("conv_alpha"), 0)
    net.load_weights(state, meta)
    return net


def _meta_number(text: str | None, fallback):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return fallback
    return int(value) if value.is_integer() else value


def _meta_args(text: str | None) -> dict:
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

