"""Kohya DyLoRA (sd-scripts networks.dylora): one LoRA trained at every rank up to network_dim at once.

Semantics of sd-scripts' DyLoRAModule, written here for this project's modules:
* each rank is its own parameter (a row of `lora_down`, a column of `lora_up`), so ranks the step does
  not train have no gradient and the optimizer leaves them alone (no momentum drift);
* every training forward picks b, a random multiple of `unit` below the rank, trains only ranks
  b … b+unit-1 and scales the branch by alpha/dim · √(dim / (b+unit));
* the file is a plain LoRA (`lora_down.weight`, `lora_up.weight`, `alpha`), so every client reads it,
  and its rank can be cut later (sd-scripts' extract_lora_from_dylora) at any multiple of `unit`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .lora_module import LoRAModule
from .kohya_lora import build_lora_like
from .network import LoRANetwork


class _Stacked:
    """`.weight` view of the per-rank parameters, so code written for LoRA modules reads a DyLoRA one."""

    def __init__(self, module: "DyLoRAModule", part: str):
        self._module, self._part = module, part

    @property
    def weight(self) -> torch.Tensor:
        return self._module.stacked(self._part)


class DyLoRAModule(LoRAModule):
    def __init__(self, lora_name, org_module, lora_dim=4, alpha=1.0, multiplier=1.0, unit=1, **dropouts):
        nn.Module.__init__(self)
        if any(dropouts.get(k) for k in ("dropout", "rank_dropout", "module_dropout")):
            raise ValueError("Kohya DyLoRA has no dropout (sd-scripts ignores it); set network_dropout, rank_dropout "
                             "and module_dropout to 0")
        if lora_dim < 1 or lora_dim % unit:
            raise ValueError(f"{lora_name}: Kohya DyLoRA needs network_dim ({lora_dim}) to be a multiple of unit "
                             f"({unit})")
        self.lora_name, self.lora_dim, self.unit = lora_name, int(lora_dim), int(unit)
        weight = org_module.weight
        self._conv_shape = None
        if isinstance(org_module, nn.Conv2d):
            in_dim, out_dim = org_module.in_channels, org_module.out_channels
            self._conv_shape = tuple(org_module.kernel_size)
            self._conv_args = dict(stride=org_module.stride, padding=org_module.padding,
                                   dilation=org_module.dilation)
            a_shape, b_shape = (1, in_dim, *org_module.kernel_size), (out_dim, 1, 1, 1)
        else:
            in_dim, out_dim = org_module.in_features, org_module.out_features
            a_shape, b_shape = (1, in_dim), (out_dim, 1)
        factory = {"device": weight.device, "dtype": torch.float32}
        self.lora_A = nn.ParameterList([nn.Parameter(torch.empty(a_shape, **factory)) for _ in range(self.lora_dim)])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(b_shape, **factory)) for _ in range(self.lora_dim)])
        for p in self.lora_A:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        alpha = float(self.lora_dim) if alpha is None or float(alpha) == 0 else float(alpha)
        self.register_buffer("alpha", torch.tensor(alpha, device=weight.device))
        self.scale = alpha / self.lora_dim
        self.multiplier = float(multiplier)
        self.dropout = self.rank_dropout = self.module_dropout = None
        self._org = [org_module]
        self._org_forward = None
        self._had_instance_forward = False
        self.merged_multiplier = None
        self.lora_down, self.lora_up = _Stacked(self, "down"), _Stacked(self, "up")

    @property
    def is_conv(self) -> bool:
        return self._conv_shape is not None

    def stacked(self, part: str) -> torch.Tensor:
        """lora_down (rank, in[, k, k]) or lora_up (out, rank[, 1, 1]) as one tensor (the file's layout)."""
        if part == "down":
            return torch.cat(tuple(self.lora_A), dim=0)
        return torch.cat(tuple(self.lora_B), dim=1)

    def forward(self, x, *args, **kwargs):
        out = self._org_forward(x, *args, **kwargs)
        if self.merged_multiplier is not None or self.multiplier == 0:
            return out
        scale = self.scale
        if self.training:
            # torch's CPU generator, not Python's: gradient checkpointing replays it in the recompute
            b = int(torch.randint(0, self.lora_dim, (1,)).item())
            b -= b % self.unit
            for i, (pa, pb) in enumerate(zip(self.lora_A, self.lora_B)):
                train = b <= i < b + self.unit
                pa.requires_grad_(train)
                pb.requires_grad_(train)
            scale = scale * math.sqrt(self.lora_dim / (b + self.unit))
        down, up = self.stacked("down"), self.stacked("up")
        if x.dtype != down.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(down.dtype)
        if self.is_conv:
            lx = nn.functional.conv2d(nn.functional.conv2d(x, down, **self._conv_args), up)
        else:
            lx = nn.functional.linear(nn.functional.linear(x, down), up)
        return out + (lx * (self.multiplier * scale)).to(out.dtype)

    def train(self, mode: bool = True):
        if not mode:  # outside training every rank is on, as the saved file is
            for p in list(self.lora_A) + list(self.lora_B):
                p.requires_grad_(True)
        return super().train(mode)

    def delta_weight(self, multiplier=None) -> torch.Tensor:
        m = self.multiplier if multiplier is None else multiplier
        down, up = self.stacked("down").float(), self.stacked("up").float()
        delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) if self.is_conv else up @ down
        return delta * (m * self.scale)

    @torch.no_grad()
    def scale_weights_(self, factor: float) -> None:
        for p in list(self.lora_A) + list(self.lora_B):
            p.mul_(factor)

    # --- the file holds a plain LoRA ------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        if destination is None:
            destination = {}
        down, up = self.stacked("down"), self.stacked("up")
        destination[prefix + "lora_down.weight"] = down if keep_vars else down.detach()
        destination[prefix + "lora_up.weight"] = up if keep_vars else up.detach()
        destination[prefix + "alpha"] = self.alpha if keep_vars else self.alpha.detach()
        return destination

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        down = state_dict.pop(prefix + "lora_down.weight", None)
        up = state_dict.pop(prefix + "lora_up.weight", None)
        if down is None or up is None:
            if strict:
                missing_keys += [prefix + "lora_down.weight", prefix + "lora_up.weight"]
            return
        if down.shape[0] != self.lora_dim:
            error_msgs.append(f"{self.lora_name}: rank {down.shape[0]} in the file, {self.lora_dim} here")
            return
        for i in range(self.lora_dim):
            state_dict[f"{prefix}lora_A.{i}"] = down[i:i + 1]
            state_dict[f"{prefix}lora_B.{i}"] = up[:, i:i + 1]
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                        unexpected_keys, error_msgs)
        alpha = float(self.alpha)
        self.scale = (alpha if alpha != 0 else self.lora_dim) / self.lora_dim


def build_from_config(base, config, kind) -> LoRANetwork:
    """Kohya DyLoRA from a training config (registry entry point). sd-scripts wants conv_dim = network_dim."""
    unit = int(config.unit)
    args = {"unit": unit}
    if config.conv_dim > 1:
        if config.conv_dim != config.network_dim:
            raise ValueError(f"Kohya DyLoRA trains the convolutions at network_dim: set conv_dim ({config.conv_dim}) "
                             f"to network_dim ({config.network_dim}), or to 1 to leave the convolutions out")
        args.update(conv_dim=config.conv_dim, conv_alpha=config.conv_alpha)
    else:
        kind = _without_conv(kind)
    return build_lora_like(base, config, kind, module_class=DyLoRAModule, module_kwargs={"unit": unit},
                           extra_args=args)


def _without_conv(kind):
    from dataclasses import replace

    return replace(kind, uses_conv_dim=False)
