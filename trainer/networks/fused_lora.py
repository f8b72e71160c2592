"""A LoRA on a *fused* layer of the original model that diffusers splits into several Linears.

FLUX.1's BFL layout has one ``qkv`` projection (and a ``linear1`` = q, k, v + MLP-in in single blocks);
diffusers' FluxTransformer2DModel holds ``to_q``, ``to_k``, ``to_v`` (+ ``proj_mlp``), all reading the
same input. kohya names and shapes the LoRA after the fused layer (lora_up rows = the concatenated
outputs), so this module keeps exactly that: one ``lora_down`` [r, in] shared by the parts and one
``lora_up`` [Σout, r] whose row blocks feed each part — the same function as a LoRA on the fused layer.
"""
from __future__ import annotations

import torch
from torch import nn

from .lora_module import LoRAModule


class LinearGroup(nn.Linear):
    """Stands for the fused layer: in_features, the summed out_features, the member Linears.
    Not a real layer (no parameters of its own); never registered in a model."""

    def __init__(self, members: list[nn.Linear], rows: list[list[int]] | None = None):
        """``rows[i]``: for each output row of member i, the fused layer's row that feeds it (default: the
        members stacked in order). A permutation such as SD3's swapped (shift, scale) modulation is allowed."""
        nn.Module.__init__(self)
        ins = {m.in_features for m in members}
        if len(ins) != 1:
            raise ValueError(f"fused layers must share their input width, got {sorted(ins)}")
        self.members = list(members)  # a plain list: no submodules, no state
        self.in_features = ins.pop()
        if rows is None:
            starts = [sum(m.out_features for m in members[:i]) for i in range(len(members))]
            rows = [list(range(s, s + m.out_features)) for s, m in zip(starts, members)]
        self.rows = [torch.tensor(r, dtype=torch.long) for r in rows]
        self.out_features = sum(len(r) for r in rows)

    @property
    def weight(self) -> torch.Tensor:  # for LoRAModule's device and dtype only
        return self.members[0].weight

    def forward(self, x):  # pragma: no cover — never called: the members run
        raise RuntimeError("LinearGroup is a description of a fused layer, not a layer")


class FusedLoRAModule(LoRAModule):
    def __init__(self, lora_name: str, org_module: LinearGroup, *args, **kwargs):
        super().__init__(lora_name, org_module, *args, **kwargs)
        self._member_forwards: list = []
        self._had_instance: list[bool] = []

    @property
    def group(self) -> LinearGroup:
        return self._org[0]

    @property
    def applied(self) -> bool:
        return bool(self._member_forwards)

    def apply_to(self) -> None:
        if self.applied:
            return
        for member, rows in zip(self.group.members, self.group.rows):
            self._had_instance.append("forward" in member.__dict__)
            self._member_forwards.append(member.forward)
            member.forward = self._part_forward(member.forward, rows.to(self.lora_up.weight.device))

    def restore(self) -> None:
        for member, forward, had in zip(self.group.members, self._member_forwards, self._had_instance):
            if had:
                member.forward = forward
            else:
                del member.forward
        self._member_forwards, self._had_instance = [], []

    def _part_forward(self, org_forward, rows: torch.Tensor):
        def up_part(lx):  # this member's rows of the fused up matrix
            return nn.functional.linear(lx, self.lora_up.weight.index_select(0, rows.to(lx.device)))

        def forward(x, *args, **kwargs):
            return self.add_change(org_forward(x, *args, **kwargs), x, up_part)

        return forward

    @torch.no_grad()
    def merge_to(self, multiplier: float | None = None) -> None:
        if self.merged_multiplier is not None:
            raise RuntimeError(f"{self.lora_name} is already merged; unmerge first")
        m = self.multiplier if multiplier is None else float(multiplier)
        self._add_delta(self.delta_weight(m))
        self.merged_multiplier = m

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_multiplier is None:
            return
        self._add_delta(-self.delta_weight(self.merged_multiplier))
        self.merged_multiplier = None

    def _add_delta(self, delta: torch.Tensor) -> None:
        for member, rows in zip(self.group.members, self.group.rows):
            w = member.weight
            w.copy_((w.float() + delta[rows.to(delta.device)].to(w.device)).to(w.dtype))


def make_lora_module(target, *args, **kwargs) -> LoRAModule:
    """The LoRA class for a target: fused for a LinearGroup, kohya's LoRAModule otherwise."""
    cls = FusedLoRAModule if isinstance(target.module, LinearGroup) else LoRAModule
    return cls(target.lora_name, target.module, *args, **kwargs)
