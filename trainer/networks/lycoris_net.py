"""LyCORIS network types (LoCon, LoHa, LoKr, iA3, DyLoRA, GLoRA, BOFT, Diag-OFT, full) on the `lycoris-lora`
package — the modules kohya_ss trains with `network_module=lycoris.kohya` — placed on this project's
catalog of layers, so a file's module names are exactly kohya's (SGM names for SDXL, like sd-scripts,
which A1111, ComfyUI and kohya's scripts read) and the save-time self-check knows every layer. On FLUX.1 and
SD3 a layer the original layout fuses (qkv, linear1) is one module over diffusers' Linears (fused_lycoris.py).

The tensors inside each module (`hada_w1_a`, `lokr_w1`, `dora_scale`, iA3 `weight`/`on_input`, ...)
are LyCORIS' own, so LyCORIS' loader (`create_lycoris_from_weights`) reads the files back.

What differs from `lycoris.kohya`: the `full` preset does not add conv_in, conv_out and the time
embedding (sd-scripts' LoRA names have no place for them in SDXL files); `train_norm` is not offered.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .files import LoRAFileError, modelspec_metadata, network_metadata, read_lora_source, save_lora_file
from .fused_lycoris import base_layers, make_lycoris_module, merge_module
from .naming import Target, all_targets, split_key, target_filter_for
from .kohya_lora import config_dropouts
from .network import canonical_state_dict, resolve_base
from .options import DORA_NOT_FP8, IA3_NOT_FP8, LYCORIS_NOT_PEFT
from .options import lycoris_module_kwargs as module_kwargs, lycoris_network_args as network_args
from .params import network_param_groups
from .patched import PatchedNetwork

logger = logging.getLogger(__name__)


def _lycoris():
    try:
        from lycoris.modules.base import LycorisBaseModule
        from lycoris.wrapper import network_module_dict
    except ImportError as e:  # a core dependency; a broken install should still say what to do
        raise RuntimeError("LyCORIS network types need the lycoris-lora package: pip install lycoris-lora") from e
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)  # one INFO line per module otherwise
    return network_module_dict, LycorisBaseModule


def preset_targets(catalog: Sequence[Target], preset: str) -> list[Target]:
    """LyCORIS' built-in presets, applied to the layers kohya names (see module docstring)."""
    def attention(t):
        return "attn" in t.path.split(".")[-2] if "." in t.path else False

    rules = {
        "full": lambda t: True,
        "full-lin": lambda t: not t.is_conv3x3 and not ("sampler" in t.path),
        "attn-mlp": lambda t: not t.is_conv_block,
        "attn-only": lambda t: not t.is_conv_block and attention(t),
        "unet-transformer-only": lambda t: t.part == "unet" and not t.is_conv_block,
        "unet-convblock-only": lambda t: t.part == "unet" and t.is_conv_block,
    }
    if preset not in rules:
        raise ValueError(f"LyCORIS_preset {preset!r} is not one of {', '.join(rules)} (preset files are not "
                         "supported)")
    return [t for t in catalog if rules[preset](t)]


class LycorisNetwork(PatchedNetwork, nn.Module):
    """The same interface as LoRANetwork: apply_to, prepare_optimizer_params, save/load, max-norm."""

    def __init__(self, family: str, catalog: Sequence[Target], modules: Sequence[nn.Module],
                 parts: Mapping[str, str], settings: Mapping[str, Any]):
        super().__init__()
        self.hold_modules(family, catalog, modules, parts, settings)

    @property
    def loras(self) -> list[nn.Module]:
        return [m for m in self.children() if hasattr(m, "lora_name")]

    @property
    def merged(self) -> bool:
        return bool(self._backups)

    @torch.no_grad()
    def merge_to(self, multiplier: float | None = None) -> None:
        """Put every module's ΔW into its layer's weight, as the forward computes it; unmerge() puts the weights
        back."""
        if self._backups:
            raise RuntimeError("already merged; unmerge first")
        for m in self.loras:
            for i, layer in enumerate(base_layers(m)):  # a fused DiT layer changes several Linears
                self._backups[(m.lora_name, i)] = layer.weight.detach().clone()
            merge_module(m, self.multiplier if multiplier is None else float(multiplier))
        self._saved_multipliers = {m.lora_name: m.multiplier for m in self.loras}
        for m in self.loras:
            m.multiplier = 0.0  # the forward branch must not add ΔW a second time

    @torch.no_grad()
    def unmerge(self) -> None:
        for m in self.loras:
            if (m.lora_name, 0) in self._backups:
                for i, layer in enumerate(base_layers(m)):
                    layer.weight.copy_(self._backups[(m.lora_name, i)])
                m.multiplier = self._saved_multipliers.get(m.lora_name, self.multiplier)
        self._backups.clear()

    def prepare_optimizer_params(self, text_encoder_lr, unet_lr, default_lr, loraplus_lr_ratio=None,
                                 loraplus_unet_lr_ratio=None, loraplus_text_encoder_lr_ratio=None):
        return network_param_groups(self.loras, self.parts, text_encoder_lr, unet_lr, default_lr,
                                    loraplus_lr_ratio=loraplus_lr_ratio, loraplus_unet_lr_ratio=loraplus_unet_lr_ratio,
                                    loraplus_text_encoder_lr_ratio=loraplus_text_encoder_lr_ratio)

    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm_value: float):
        """`scale_weight_norms` through each LyCORIS module's own apply_max_norm (types without one skip)."""
        scaled, norms = 0, []
        for m in self.loras:
            hit, norm = m.apply_max_norm(max_norm_value, None)
            if hit is None:
                continue
            scaled += int(bool(hit))
            norms.append(float(norm))
        return scaled, (sum(norms) / len(norms) if norms else 0.0), max(norms, default=0.0)

    # --- files ----------------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        """The file's tensors (LyCORIS' own per-module layout), with 1×1-conv `lora_up` kept 4-D: LyCORIS'
        DyLoRA writes it 2-D, which A1111 cannot put on a convolution."""
        sd = super().state_dict(*args, **kwargs)
        for m in self.loras:
            key = f"{m.lora_name}.lora_up.weight"
            if key in sd and sd[key].dim() == 2 and isinstance(m.org_module[0], nn.Conv2d):
                sd[key] = sd[key][:, :, None, None]
        return sd

    def training_state(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer as trained (for save_state / resume): LyCORIS' file layout folds
        some of them together and cannot be loaded back into every module type."""
        state = {f"p.{k}": v for k, v in self.named_parameters()}
        state.update({f"b.{k}": v for k, v in self.named_buffers()})
        return state

    @torch.no_grad()
    def load_training_state(self, state: Mapping[str, torch.Tensor]) -> None:
        own = self.training_state()
        missing = sorted(set(own) - set(state))
        if missing:
            raise LoRAFileError(f"the saved state does not fit this network ({len(missing)} tensors missing, "
                                f"e.g. {missing[0][2:]}); resume with the LoRA_type and ranks it was saved with")
        for k, v in own.items():
            v.copy_(state[k])

    def default_metadata(self, title: str = "") -> dict[str, str]:
        s = self.settings
        meta = network_metadata(self.family, s.get("network_dim"), s.get("network_alpha"), 0, 0, s.get("dropout"),
                                None, None, bool(s.get("v_prediction")), extra_args=s.get("network_args"))
        meta["ss_network_module"] = "lycoris.kohya"
        meta.update(modelspec_metadata(self.family, title, v_prediction=bool(s.get("v_prediction"))))
        return meta

    def save_weights(self, path, dtype=None, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        metadata = dict(metadata or {})
        title = str(metadata.get("ss_output_name") or Path(path).stem)
        return save_lora_file(path, self.state_dict(), {**self.default_metadata(title), **metadata}, dtype)

    def load_weights(self, path_or_state, metadata: Mapping[str, str] | None = None):
        """Load a file of the same type and ranks (continue training); a clear error otherwise."""
        state, meta, source = read_lora_source(path_or_state, metadata)
        state = canonical_state_dict(state, meta, self.catalog, self.family, source)
        own = self.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        foreign = sorted({split_key(k)[1] for k in state if split_key(k)[0] in dict(self.named_children())
                          and k not in own})
        if wrong or foreign:
            what = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here"
                    if wrong else f"the file has {', '.join(foreign[:4])} tensors this network type does not")
            raise LoRAFileError(f"{source} does not fit this {self.settings.get('lora_type')} network: {what}. "
                                "Pick the LoRA_type and ranks the file was trained with.")
        missing, _ = self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        if missing:
            logger.warning("%s: %d tensors of this network are not in the file and keep their initial values",
                           source, len(missing))
        return missing


def create_lycoris_network(base, algo: str, *, network_dim: int = 4, network_alpha: float = 1.0,
                           conv_dim: int = 0, conv_alpha: float = 1.0, preset: str = "full",
                           train_unet: bool = True, train_text_encoder: bool = True, multiplier: float = 1.0,
                           dropout=None, rank_dropout=None, module_dropout=None, settings=None,
                           target_filter=None, **kwargs) -> LycorisNetwork:
    """Build (not yet apply) a LyCORIS network of `algo` on a base model (BaseModel or component dict).
    `target_filter(target) -> bool` narrows it (a DiT family's options: FLUX train_blocks, train_t5xxl)."""
    modules_by_algo, _ = _lycoris()
    cls = modules_by_algo[algo]
    unet, tes, fam = resolve_base(base)
    catalog = all_targets(unet, tes, fam, include_conv_blocks=True)
    modules, parts = [], {}
    for t in preset_targets(catalog, preset):
        if (t.part == "unet" and not train_unet) or (t.part != "unet" and not train_text_encoder):
            continue
        if target_filter is not None and not target_filter(t):
            continue
        dim, alpha = (conv_dim, conv_alpha) if t.is_conv3x3 else (network_dim, network_alpha)
        if not dim and algo not in ("ia3", "full"):
            continue  # conv_dim 0: no LoRA on the 3×3 convolutions, as in LyCORIS
        m = make_lycoris_module(cls, t, multiplier, max(int(dim or 1), 1), alpha, float(dropout or 0),
                                float(rank_dropout or 0), float(module_dropout or 0), **kwargs)
        modules.append(m)
        parts[t.lora_name] = t.part
    if not modules:
        raise ValueError("the LyCORIS network has no modules: check LyCORIS_preset and the train_* options")
    logger.info("LyCORIS %s network for %s: %s", algo, fam,
                ", ".join(f"{k} {v}" for k, v in sorted(Counter(parts.values()).items())))
    s = dict(network_dim=network_dim, network_alpha=network_alpha, dropout=dropout, multiplier=multiplier,
             v_prediction=bool(getattr(base, "v_prediction", False)), algo=algo, **dict(settings or {}))
    return LycorisNetwork(fam, catalog, modules, parts, s)


def build_from_config(base, config, kind) -> LycorisNetwork:
    """A LyCORIS type from a training config (registry entry point); loads `network_weights`."""
    if config.dim_from_weights:
        raise ValueError("dim_from_weights reads ranks of Standard/LoCon files only; for LyCORIS types set "
                         "network_dim/conv_dim to the file's and keep network_weights")
    if config.save_lora_format == "diffusers":
        raise ValueError(LYCORIS_NOT_PEFT)
    kw = module_kwargs(config, kind.algo)
    if (config.fp8_base or config.fp8_base_unet) and kind.algo in ("locon", "loha", "lokr", "ia3"):
        # LyCORIS' rebuild reads (and casts ΔW to) the layer's weight, which fp8_base stores in 8 bits; its
        # bypass path adds the branch to the layer's own (widening) forward
        if kw.get("weight_decompose") or kind.algo == "ia3":
            raise ValueError(DORA_NOT_FP8 if kind.algo != "ia3" else IA3_NOT_FP8)
        kw["bypass_mode"] = True
    conv = kind.uses_conv_dim
    net = create_lycoris_network(
        base, kind.algo, network_dim=config.network_dim, network_alpha=config.network_alpha,
        conv_dim=config.conv_dim if conv else config.network_dim, conv_alpha=config.conv_alpha if conv else 1.0,
        preset=config.LyCORIS_preset,
        train_unet=not config.network_train_text_encoder_only,
        train_text_encoder=not config.network_train_unet_only,
        settings={"lora_type": kind.lora_type, "network_args": network_args(config, kind, kw)},
        target_filter=target_filter_for(base.family, config), **config_dropouts(config), **kw)
    weights = config.network_weights
    if weights:
        net.load_weights(weights)
    return net
