"""LyCORIS modules (LoCon/DoRA, LoHa, LoKr, iA3) on a *fused* layer of a DiT's original layout.

FLUX.1's ``img_attn.qkv`` / ``txt_attn.qkv`` / single-block ``linear1`` and SD3's ``attn.qkv`` (and its last
block's row-swapped modulation) are one Linear in the BFL/SAI files — where sd-scripts' LyCORIS puts one
module, and what ComfyUI/Forge patch — but several Linears in diffusers. The module here is LyCORIS' own
class, built on a stand-in of the fused layer (``FusedWeightView``) so its tensors have the fused shape
and its file keys are kohya's (``lora_unet_double_blocks_0_img_attn_qkv.lokr_w1``). At run time each
member Linear adds its rows of the fused ΔW, computed as LyCORIS' rebuild forward computes it.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from .fused_lora import LinearGroup

class FusedWeightView(LinearGroup):
    """A fused layer as LyCORIS sees it: `weight` is the original layer's (members' rows in the original
    order), read for DoRA's norms and iA3; nothing runs through it."""

    def __init__(self, group: LinearGroup):
        super().__init__(group.members, [r.tolist() for r in group.rows])
        order = torch.cat(self.rows)
        self._order = None if torch.equal(order, torch.arange(len(order))) else torch.argsort(order)

    @property
    def weight(self) -> torch.Tensor:
        w = torch.cat([m.weight for m in self.members])
        return w if self._order is None else w.index_select(0, self._order.to(w.device))

    @property
    def bias(self):
        return None


class FusedLycorisMixin:
    """Overrides of a LyCORIS module class whose org_module is a FusedWeightView: the members run."""

    @property
    def view(self) -> FusedWeightView:
        return self.org_module[0]

    def apply_to(self, **kwargs) -> None:
        if getattr(self, "_member_forwards", None):
            return
        self._member_forwards = []
        for member, rows in zip(self.view.members, self.view.rows):
            self._member_forwards.append((member, member.forward, "forward" in member.__dict__))
            member.forward = self._member_forward(member, member.forward, rows)

    def restore(self) -> None:
        for member, forward, had in reversed(getattr(self, "_member_forwards", [])):
            if had:
                member.forward = forward
            else:
                del member.forward
        self._member_forwards = []

    def _member_forward(self, member: nn.Linear, org_forward, rows: torch.Tensor):
        def forward(x, *args, **kwargs):
            out = org_forward(x, *args, **kwargs)
            if self.multiplier == 0:
                return out
            if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
                return out
            r = rows.to(x.device)
            if hasattr(self, "train_input"):  # iA3: a scale per channel, applied to the member's own forward
                return out + self._ia3_diff(member, org_forward, x, out, r, *args, **kwargs).to(out.dtype)
            if self.bypass_mode and not getattr(self, "wd", False):
                diff = self.bypass_forward_diff(x, scale=self.multiplier)
                return out + diff.index_select(-1, r).to(out.dtype)
            delta = self.fused_delta(self.multiplier).index_select(0, r)
            return out + F.linear(x, delta.to(device=x.device, dtype=x.dtype)).to(out.dtype)

        return forward

    def _ia3_diff(self, member, org_forward, x, out, rows, *args, **kwargs):
        """What iA3's W·(1 + w) adds to a member: its output rows scaled (not the bias), or its forward of the
        scaled inputs. Reads no weight, so it runs on fp8 weights too."""
        scale = self.weight.reshape(-1) * self.multiplier
        bias = member.bias
        if self.train_input:
            y = org_forward(x * scale.to(x.dtype), *args, **kwargs)
            return y - bias if bias is not None else y
        y = out - bias if bias is not None else out
        return y * scale.index_select(0, rows).to(y.dtype)

    def fused_delta(self, multiplier: float) -> torch.Tensor:
        return forward_delta(self, multiplier)

    @torch.no_grad()
    def merge_to(self, multiplier: float = 1.0, **kwargs) -> None:
        _add_rows(self.view, self.fused_delta(multiplier))


def forward_delta(module: nn.Module, multiplier: float) -> torch.Tensor | None:
    """ΔW of a LoCon/DoRA, LoHa, LoKr or iA3 module as LyCORIS' rebuild forward adds it — one alpha/rank
    scale (its get_diff_weight, and so its merge, scales LoHa/LoKr twice), DoRA's norms over the whole
    (for a fused layer: the original) weight. None for the other module types."""
    from lycoris.modules.ia3 import IA3Module
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    if isinstance(module, IA3Module):
        return module.get_diff_weight(multiplier)[0]
    if isinstance(module, LoConModule):
        diff = module.make_weight(module.lora_up.weight.device) * module.scale
    elif isinstance(module, (LohaModule, LokrModule)):  # get_weight holds the scale
        diff = module.get_weight(module.shape) * module.scalar
    else:
        return None
    if module.wd:
        base = module._current_weight().to(diff.device)
        diff = diff.to(base.dtype)
        return module.apply_weight_decompose(base + diff, multiplier) - base
    return diff * multiplier


@torch.no_grad()
def merge_module(module: nn.Module, multiplier: float) -> None:
    """Put a module's ΔW into its layer's weight as its forward computes it (LyCORIS' own merge otherwise)."""
    if isinstance(module, FusedLycorisMixin):
        module.merge_to(multiplier)
        return
    delta = forward_delta(module, multiplier)
    if isinstance(module.org_module[0], FusedWeightView):  # rebuilt from a file on a fused DiT layer
        if delta is None:  # LyCORIS' own merge would write into the stand-in's concatenated copy
            raise ValueError(f"{module.lora_name}: a {type(module).__name__} cannot be merged into a fused layer "
                             "(LoCon, LoHa, LoKr, DoRA and iA3 can)")
        _add_rows(module.org_module[0], delta)
    elif delta is None:
        module.merge_to(multiplier)
    else:
        weight = module.org_module[0].weight
        _add(weight, delta.reshape(weight.shape))


def _add_rows(view: FusedWeightView, delta: torch.Tensor) -> None:
    """Each member of a fused layer takes its rows of the fused ΔW."""
    for member, rows in zip(view.members, view.rows):
        _add(member.weight, delta.index_select(0, rows.to(delta.device)))


def _add(weight: torch.Tensor, delta: torch.Tensor) -> None:
    weight.copy_((weight.float() + delta.float().to(weight.device)).to(weight.dtype))


@functools.cache
def fused_class(cls: type) -> type:
    """`cls` (a LyCORIS module class) running on the members of a fused layer."""
    return type(f"Fused{cls.__name__}", (FusedLycorisMixin, cls), {})


def make_lycoris_module(cls: type, target, *args, **kwargs) -> nn.Module:
    """A LyCORIS module for a catalog target: on the layer itself, or on the fused layer's stand-in."""
    if not isinstance(target.module, LinearGroup):
        return cls(target.lora_name, target.module, *args, **kwargs)
    # LyCORIS forces bypass mode on any Linear subclass unless told: rebuild unless the user asked for it
    kwargs["bypass_mode"] = bool(kwargs.get("bypass_mode"))
    return fused_class(cls)(target.lora_name, FusedWeightView(target.module), *args, **kwargs)


def base_layers(module: nn.Module) -> list[nn.Module]:
    """The Linear/Conv layers whose weights a LyCORIS module changes when merged."""
    org = module.org_module[0]
    return list(org.members) if isinstance(org, LinearGroup) else [org]
