"""LoRA-FA (sd-scripts networks.lora_fa; arXiv 2308.03303): LoRA whose down projection (A) stays frozen at
its random start, so only lora_up (B) learns — no gradients or optimizer state for half the parameters.

Semantics of sd-scripts' module, written here for this project's modules:
* lora_down starts from a normal distribution with std √(2 / (in + rank)) (the paper's init, `in` the
  layer's input features or channels), lora_up from zeros;
* only lora_up is a trainable parameter: `requires_grad_` never switches lora_down on, so the optimizer
  groups (params.py) never hold it;
* the file is a plain LoRA (`lora_down.weight`, `lora_up.weight`, `alpha`), same names as networks.lora.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .kohya_lora import build_lora_like
from .lora_module import LoRAModule
from .network import LoRANetwork


class LoRAFAModule(LoRAModule):
    def __init__(self, lora_name, org_module, lora_dim=4, alpha=1.0, multiplier=1.0, **dropouts):
        super().__init__(lora_name, org_module, lora_dim, alpha, multiplier, **dropouts)
        in_dim = org_module.in_channels if self.is_conv else org_module.in_features
        nn.init.normal_(self.lora_down.weight, std=math.sqrt(2.0 / (in_dim + self.lora_dim)))
        self.lora_down.requires_grad_(False)

    def requires_grad_(self, requires_grad: bool = True):
        self.lora_up.requires_grad_(requires_grad)
        self.lora_down.requires_grad_(False)  # A is never trained
        return self

    @torch.no_grad()
    def scale_weights_(self, factor: float) -> None:
        """scale_weight_norms: ΔW by factor², all of it on lora_up, so lora_down keeps its starting values
        (sd-scripts' lora_fa scales both halves, moving the frozen A)."""
        self.lora_up.weight.mul_(factor * factor)


def build_from_config(base, config, kind) -> LoRANetwork:
    """LoRA-FA from a training config (registry entry point): Standard's layers and options, A frozen."""
    return build_lora_like(base, config, kind, module_class=LoRAFAModule)
