"""kohya_ss' LoRA_type "Flux1 OFT": sd-scripts' ``networks.oft_flux``, orthogonal fine-tuning of the FLUX.1
transformer (and Chroma, whose blocks carry the same BFL names).

The math, per targeted Linear and per *split* of its output rows (kohya keeps one block tensor per split):

* ``network_dim`` is the number of diagonal blocks k (not a rank): a split of d rows has k blocks of d/k rows,
  so k must divide every split width;
* each split's parameter B (k×n×n, zeros at the start) gives the skew-symmetric Q = B − Bᵀ; the norm of Q over
  all k blocks is clamped to ``network_alpha``·d (kohya's constraint; sd-scripts suggests alpha ≈ 1e-3);
* R = (I + Q)(I − Q)⁻¹ per block (Cayley: orthogonal, and I while B is zero, so an untrained network changes
  nothing), weighted by the multiplier m: R' = I + m(R − I);
* the layer computes x·W'ᵀ + b where each block of d/k rows of W becomes R'ᵀ·(those rows); the bias is kept.

Targets as sd-scripts: by default the Linears of the double blocks' attention (``img_attn.qkv/proj``,
``txt_attn.qkv/proj``); with ``enable_all_linear`` every Linear of the double and single blocks. Fused BFL layers
split as sd-scripts splits them (``qkv`` into q, k, v; single ``linear1`` into q, k, v, MLP-in): one block
tensor per diffusers Linear here. The transformer only: no text encoders, dropouts, LoRA+ or max-norm.

File: ``oft_unet_<BFL module path>.oft_blocks.<split>`` [k, n, n] and ``.alpha``; ss_network_module
``networks.oft_flux``. (ComfyUI's OFT adapter reads LyCORIS' one-tensor ``oft_blocks`` under ``lora_unet_``
names, so these files are for sd-scripts-style loaders: see docs/networks.md.)
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .files import LoRAFileError, modelspec_metadata, network_metadata, read_lora_file, read_lora_source
from .files import save_lora_file
from .fused_lora import LinearGroup
from .naming import Target, all_targets, resolve_base, split_key
from .params import network_param_groups
from .patched import PatchedNetwork

logger = logging.getLogger(__name__)

PREFIX = "oft_unet"
NETWORK_MODULE = "networks.oft_flux"
ATTENTION = ("_img_attn_", "_txt_attn_")  # sd-scripts' default targets: the SelfAttention modules


def oft_name(lora_name: str) -> str:
    """lora_unet_double_blocks_0_img_attn_qkv → oft_unet_double_blocks_0_img_attn_qkv."""
    return PREFIX + lora_name[len("lora_unet"):]


def members_of(module: nn.Module) -> list[nn.Linear]:
    """The diffusers Linears of a target: a fused BFL layer's parts, in their row order, or the layer itself."""
    return list(module.members) if isinstance(module, LinearGroup) else [module]


class OFTModule(nn.Module):
    """One targeted BFL layer: a block tensor per split (diffusers Linear), each rotating its Linear's rows."""

    def __init__(self, lora_name: str, target_module: nn.Module, num_blocks: int, alpha: float,
                 multiplier: float = 1.0):
        super().__init__()
        self.lora_name = lora_name
        self.members = members_of(target_module)  # a plain list: the base layers stay the model's
        self.widths = [m.out_features for m in self.members]
        self.num_blocks = int(num_blocks)
        self.oft_blocks = nn.ParameterList(
            [nn.Parameter(torch.zeros(self.num_blocks, w // self.num_blocks, w // self.num_blocks))
             for w in self.widths])
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.multiplier = float(multiplier)
        self._patched: list[tuple[nn.Module, bool, Any]] = []

    def rotation(self, split: int, multiplier: float) -> torch.Tensor:
        """R' = I + m((I+Q)(I−Q)⁻¹ − I) of one split, [k, n, n] in float32."""
        b = self.oft_blocks[split].float()
        q = b - b.transpose(1, 2)
        norm = q.norm()
        limit = self.alpha.float() * self.widths[split]  # kohya's constraint: alpha × the split's width
        q = q * ((torch.minimum(norm, limit) + 1e-8) / (norm + 1e-8))
        eye = torch.eye(q.shape[-1], device=q.device)
        r = (eye + q) @ torch.linalg.inv(eye - q)
        return eye + multiplier * (r - eye)

    def rotated_weight(self, split: int, multiplier: float) -> torch.Tensor:
        """The split's Linear weight with each block of rows turned by Rᵀ (sd-scripts' einsum "knm,knp->kmp")."""
        w = self.members[split].weight.float()
        r = self.rotation(split, multiplier)
        return torch.bmm(r.transpose(1, 2), w.reshape(self.num_blocks, -1, w.shape[1])).reshape(w.shape)

    # --- patching the diffusers Linears ------------------------------------------------------------
    def apply_to(self) -> None:
        if self._patched:
            return
        for split, member in enumerate(self.members):
            self._patched.append((member, "forward" in member.__dict__, member.forward))
            member.forward = self._forward_of(split, member, member.forward)

    def restore(self) -> None:
        for member, had_instance, forward in reversed(self._patched):
            if had_instance:
                member.forward = forward
            else:
                del member.forward
        self._patched = []

    def _forward_of(self, split: int, member: nn.Linear, org_forward):
        def forward(x, *args, **kwargs):
            if self.multiplier == 0.0:  # off, or merged into the weight
                return org_forward(x, *args, **kwargs)
            w = self.rotated_weight(split, self.multiplier).to(x.dtype)
            return F.linear(x, w, None if member.bias is None else member.bias.to(x.dtype))

        return forward


class OFTNetwork(PatchedNetwork, nn.Module):
    """The network interface LoraKind drives (apply_to, optimizer groups, save/load, merge) for OFT modules."""

    def __init__(self, family: str, catalog: Sequence[Target], modules: Sequence[OFTModule],
                 settings: Mapping[str, Any]):
        super().__init__()
        self.hold_modules(family, catalog, modules, {m.lora_name: "unet" for m in modules}, settings)

    @property
    def loras(self) -> list[OFTModule]:
        return [m for m in self.children() if isinstance(m, OFTModule)]

    def prepare_optimizer_params(self, text_encoder_lr, unet_lr, default_lr, **_loraplus):
        return network_param_groups(self.loras, self.parts, text_encoder_lr, unet_lr, default_lr)

    # --- merging (previews, LoRA tools) -------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return bool(self._backups)

    @torch.no_grad()
    def merge_to(self, multiplier: float | None = None) -> None:
        """Write every rotated weight into its Linear (the forward then passes through); unmerge() undoes it."""
        if self._backups:
            raise RuntimeError("already merged; unmerge first")
        m = self.multiplier if multiplier is None else float(multiplier)
        for module in self.loras:
            for split, member in enumerate(module.members):
                self._backups[(module.lora_name, split)] = member.weight.detach().clone()
                member.weight.copy_(module.rotated_weight(split, m).to(member.weight.dtype))
            module.multiplier = 0.0

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self._backups:
            return
        for module in self.loras:
            for split, member in enumerate(module.members):
                member.weight.copy_(self._backups.pop((module.lora_name, split)))
            module.multiplier = self.multiplier

    # --- files ---------------------------------------------------------------------------------------
    def default_metadata(self, title: str = "") -> dict[str, str]:
        s = self.settings
        args = {"enable_all_linear": "True"} if s.get("enable_all_linear") else None
        meta = network_metadata(self.family, s["network_dim"], s["network_alpha"], extra_args=args)
        meta["ss_network_module"] = NETWORK_MODULE
        meta.update(modelspec_metadata(self.family, title))
        return meta

    def save_weights(self, path, dtype=None, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        metadata = dict(metadata or {})
        title = str(metadata.get("ss_output_name") or Path(path).stem)
        return save_lora_file(path, self.state_dict(), {**self.default_metadata(title), **metadata}, dtype)

    def load_weights(self, path_or_state, metadata: Mapping[str, str] | None = None) -> list[str]:
        """Load a Flux1 OFT file with this network's modules and block count; a clear error otherwise."""
        state, _, source = read_lora_source(path_or_state, metadata)
        own = self.state_dict()
        foreign = sorted({split_key(k)[0] for k in state if k not in own})
        wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if foreign:
            raise LoRAFileError(f"{source} is not a Flux1 OFT file for this network: it has {foreign[0]} "
                                f"({len(foreign)} modules this network lacks). A file trained with "
                                "enable_all_linear needs it on; other LoRA types need their own LoRA_type")
        if wrong:
            raise LoRAFileError(f"{source}: {wrong[0]} is {tuple(state[wrong[0]].shape)} in the file, "
                                f"{tuple(own[wrong[0]].shape)} here: set network_dim to the file's number of "
                                f"blocks ({state[wrong[0]].shape[0]}) or turn on dim_from_weights")
        missing = sorted(set(own) - set(state))
        self.load_state_dict(state, strict=False)
        if missing:
            logger.warning("%s: %d tensors of this network are not in the file and keep their initial values",
                           source, len(missing))
        return missing


def oft_targets(catalog: Sequence[Target], enable_all_linear: bool) -> list[Target]:
    """sd-scripts' targets: the double/single blocks' Linears, or only the double blocks' attention."""
    blocks = [t for t in catalog if t.part == "unet"
              and t.lora_name.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))]
    return blocks if enable_all_linear else [t for t in blocks if any(a in t.lora_name for a in ATTENTION)]


def create_oft_network(base, network_dim: int, network_alpha: float, enable_all_linear: bool = False,
                       multiplier: float = 1.0) -> OFTNetwork:
    """Build (not yet apply) a Flux1 OFT network on a FLUX.1 / Chroma BaseModel."""
    transformer, _, family = resolve_base(base)
    catalog = all_targets(transformer, [], family, include_conv_blocks=False)
    targets = oft_targets(catalog, enable_all_linear)
    widths = [m.out_features for t in targets for m in members_of(t.module)]
    if not targets:
        raise ValueError(f"the {family} transformer has no double/single-block Linears for Flux1 OFT")
    common = math.gcd(*widths)
    if network_dim < 1 or common % network_dim:
        divisors = [d for d in range(1, common + 1) if common % d == 0]
        raise ValueError(f"network_dim {network_dim} is the number of OFT blocks per layer and must divide every "
                         f"targeted layer's width (here a multiple of {common}): use one of "
                         f"{', '.join(map(str, divisors[-12:]))}")
    if network_alpha >= 1:  # sd-scripts warns the same way
        logger.warning("network_alpha %s lets the rotation grow as far as it likes (constraint alpha × width); "
                       "sd-scripts suggests about 1e-3 for Flux1 OFT", network_alpha)
    modules = [OFTModule(oft_name(t.lora_name), t.module, network_dim, network_alpha, multiplier) for t in targets]
    logger.info("Flux1 OFT network for %s: %d modules, %d blocks each, constraint alpha %s", family, len(modules),
                network_dim, network_alpha)
    settings = dict(network_dim=network_dim, network_alpha=network_alpha, enable_all_linear=enable_all_linear,
                    multiplier=multiplier)
    return OFTNetwork(family, catalog, modules, settings)


def shape_from_file(path) -> tuple[int, bool]:
    """(number of blocks, enable_all_linear) of a Flux1 OFT file, for dim_from_weights."""
    state, _ = read_lora_file(path)
    blocks = Counter(int(v.shape[0]) for k, v in state.items() if ".oft_blocks." in k)
    if not blocks:
        raise LoRAFileError(f"{path} has no oft_blocks tensors: it is not a Flux1 OFT file")
    names = {split_key(k)[0] for k in state}
    return blocks.most_common(1)[0][0], any(not any(a in n for a in ATTENTION) for n in names)


def build_from_config(base, config, kind) -> OFTNetwork:
    """Flux1 OFT from a training config (registry entry point); loads `network_weights`."""
    dim, all_linear = config.network_dim, bool(config.enable_all_linear)
    weights = config.network_weights
    if weights and config.dim_from_weights:
        dim, all_linear = shape_from_file(weights)
    network = create_oft_network(base, dim, config.network_alpha, all_linear)
    if weights:
        network.load_weights(weights)
    return network
