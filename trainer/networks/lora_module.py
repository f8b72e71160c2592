"""One LoRA / LoCon adapter wrapped around a base Linear or Conv2d (kohya's LoRAModule).

The base module keeps its parameters and state-dict keys; only its `forward` is replaced while
the adapter is applied, so the base model saves and loads exactly as before.

    y = W·x + multiplier · (alpha / dim) · up(dropout(down(x)))
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRAModule(nn.Module):
    def __init__(
        self,
        lora_name: str,
        org_module: nn.Module,
        lora_dim: int = 4,
        alpha: float | None = 1.0,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
    ):
        super().__init__()
        if lora_dim < 1:
            raise ValueError(f"{lora_name}: LoRA rank must be >= 1, got {lora_dim}")
        self.lora_name = lora_name
        self.lora_dim = int(lora_dim)
        weight = org_module.weight
        factory = {"device": weight.device, "dtype": torch.float32}
        if isinstance(org_module, nn.Conv2d):
            if org_module.groups != 1:
                raise ValueError(f"{lora_name}: grouped convolutions are not supported")
            # down keeps the base conv's kernel/stride/padding, up is a 1×1 projection (kohya)
            self.lora_down = nn.Conv2d(
                org_module.in_channels, self.lora_dim, org_module.kernel_size, org_module.stride,
                org_module.padding, org_module.dilation, bias=False, **factory,
            )
            self.lora_up = nn.Conv2d(self.lora_dim, org_module.out_channels, 1, 1, bias=False, **factory)
        elif isinstance(org_module, nn.Linear):
            self.lora_down = nn.Linear(org_module.in_features, self.lora_dim, bias=False, **factory)
            self.lora_up = nn.Linear(self.lora_dim, org_module.out_features, bias=False, **factory)
        else:
            raise TypeError(f"{lora_name}: LoRA wraps Linear or Conv2d, not {type(org_module).__name__}")

        # alpha None/0 means "no scaling" (alpha = dim), as in kohya and every client
        alpha = float(self.lora_dim) if alpha is None or float(alpha) == 0 else float(alpha)
        self.register_buffer("alpha", torch.tensor(alpha, device=weight.device))
        self.scale = alpha / self.lora_dim

        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

        self.multiplier = float(multiplier)
        self.dropout = dropout or None
        self.rank_dropout = rank_dropout or None
        self.module_dropout = module_dropout or None

        # a plain list keeps the base module out of this module's children and state dict
        self._org = [org_module]
        self._org_forward = None
        self._had_instance_forward = False
        self.merged_multiplier: float | None = None

    @property
    def org_module(self) -> nn.Module:
        return self._org[0]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.lora_down, nn.Conv2d)

    @property
    def applied(self) -> bool:
        return self._org_forward is not None

    # --- applying to the base model -------------------------------------------------------

    def apply_to(self) -> None:
        if self.applied:
            return
        org = self.org_module
        self._had_instance_forward = "forward" in org.__dict__
        self._org_forward = org.forward
        org.forward = self.forward

    def restore(self) -> None:
        if not self.applied:
            return
        org = self.org_module
        if self._had_instance_forward:
            org.forward = self._org_forward
        else:
            del org.forward  # back to the class's own forward
        self._org_forward = None

    def forward(self, x, *args, **kwargs):
        return self.add_change(self._org_forward(x, *args, **kwargs), x, self.lora_up)

    def add_change(self, out, x, up):
        """`out` (the base layer's output for `x`) plus this module's change; `up` maps the rank to out's features."""
        if self.merged_multiplier is not None or self.multiplier == 0:
            return out  # already inside the base weights, or switched off
        if self.training and self.module_dropout is not None and torch.rand(1).item() < self.module_dropout:
            return out

        weight = self.lora_down.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)  # under autocast the matmul casts both sides itself: no extra copy
        lx = self.lora_down(x)
        if self.training and self.dropout is not None:
            lx = nn.functional.dropout(lx, p=self.dropout)

        scale = self.scale
        if self.training and self.rank_dropout is not None:
            lx = lx * self._rank_mask(lx)
            scale = scale / (1.0 - self.rank_dropout)  # as if the rank were smaller

        lx = up(lx)
        return out + (lx * (self.multiplier * scale)).to(out.dtype)

    def _rank_mask(self, lx: torch.Tensor) -> torch.Tensor:
        """Per-sample mask over the rank channels (dim 1 for convs, the last dim otherwise)."""
        mask = (torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout).to(lx.dtype)
        if self.is_conv:
            return mask[:, :, None, None]
        if lx.dim() == 3:
            return mask[:, None, :]
        return mask

    # --- merging into the base weights ----------------------------------------------------

    def delta_weight(self, multiplier: float | None = None) -> torch.Tensor:
        """ΔW = multiplier · scale · up@down, shaped like the base weight (computed in fp32)."""
        m = self.multiplier if multiplier is None else multiplier
        up = self.lora_up.weight.float()
        down = self.lora_down.weight.float()
        if self.is_conv:
            delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        else:
            delta = up @ down
        return delta * (m * self.scale)

    @torch.no_grad()
    def scale_weights_(self, factor: float) -> None:
        """Multiply both halves by `factor` (ΔW by factor², for scale_weight_norms)."""
        self.lora_up.weight.mul_(factor)
        self.lora_down.weight.mul_(factor)

    @torch.no_grad()
    def merge_to(self, multiplier: float | None = None) -> None:
        if self.merged_multiplier is not None:
            raise RuntimeError(f"{self.lora_name} is already merged; unmerge first")
        m = self.multiplier if multiplier is None else float(multiplier)
        w = self.org_module.weight
        w.copy_((w.float() + self.delta_weight(m).to(w.device)).to(w.dtype))
        self.merged_multiplier = m

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_multiplier is None:
            return
        w = self.org_module.weight
        w.copy_((w.float() - self.delta_weight(self.merged_multiplier).to(w.device)).to(w.dtype))
        self.merged_multiplier = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # the file's alpha decides the scale (kohya keeps a stale scale here; we do not)
        alpha = float(self.alpha)
        self.scale = (alpha if alpha != 0 else self.lora_dim) / self.lora_dim

    def extra_repr(self) -> str:
        return f"dim={self.lora_dim}, alpha={float(self.alpha):g}, conv={self.is_conv}"
