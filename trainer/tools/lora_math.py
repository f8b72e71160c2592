"""The linear algebra the LoRA tools share: a module's ΔW, its best rank-r factors, rank choice.

A kohya LoRA module is `down` (r×in, or r×in×k×k for a LoCon conv), `up` (out×r, or out×r×1×1)
and `alpha`; it adds ΔW = (alpha / r) · up @ down to the base weight. Everything here works on
ΔW flattened to a matrix (out × in·k·k) in fp32 on the CPU (or the given device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass
class ModuleWeights:
    """One LoRA module of a file."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 4

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the base weight this module changes."""
        if self.is_conv:
            return (self.up.shape[0], self.down.shape[1], *self.down.shape[2:])
        return (self.up.shape[0], self.down.shape[1])

    def delta(self, device=None) -> torch.Tensor:
        """ΔW = scale · up @ down, shaped like the base weight, in fp32."""
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return ((up @ down) * self.scale).reshape(self.weight_shape)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.lora_down.weight": self.down, f"{name}.lora_up.weight": self.up,
                f"{name}.alpha": torch.tensor(float(self.alpha))}


@dataclass
class Factors:
    """A rank-r factorization of a ΔW with what it keeps of it."""

    module: ModuleWeights
    singular_values: torch.Tensor  # all of them, descending
    rank: int

    @property
    def kept_fro(self) -> float:
        """Fraction of ‖ΔW‖_F the rank-r factors keep (1.0 = all of it)."""
        return fro_kept(self.singular_values, self.rank)


def fro_kept(s: torch.Tensor, rank: int) -> float:
    total = float(s.pow(2).sum())
    return 1.0 if total == 0 else math.sqrt(float(s[:rank].pow(2).sum()) / total)


def svd(delta: torch.Tensor):
    """(U, S, Vh) of ΔW as a matrix out × (in·k·k)."""
    return torch.linalg.svd(delta.reshape(delta.shape[0], -1).float(), full_matrices=False)


def factorize(delta: torch.Tensor, rank: int, alpha: float | None = None, clamp_quantile: float = 1.0,
              decomposed=None) -> Factors:
    """Best rank-`rank` approximation of ΔW (Eckart–Young) as kohya factors.

    up = U·S (out×r), down = Vh (r×in·k·k), as sd-scripts' tools write them. `alpha` is the file's
    alpha for the module (default: rank, scale 1); up is divided by alpha/rank so the file's ΔW is
    the approximation. `clamp_quantile` < 1 clamps the factor values to that quantile of their
    magnitudes (kohya's default 0.99 tames outliers for fp16; 1.0 keeps them exact)."""
    u, s, vh = decomposed if decomposed is not None else svd(delta)
    rank = max(1, min(int(rank), s.numel()))
    alpha = float(rank if alpha is None else alpha)
    up = u[:, :rank] * s[:rank]
    down = vh[:rank]
    if clamp_quantile < 1.0:
        hi = torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs(), clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    up = up / (alpha / rank)
    if delta.dim() == 4:
        down = down.reshape(rank, *delta.shape[1:])
        up = up.reshape(delta.shape[0], rank, 1, 1)
    return Factors(ModuleWeights(down.contiguous(), up.contiguous(), alpha), s, rank)


def dynamic_rank(s: torch.Tensor, method: str, param: float, max_rank: int) -> int:
    """Rank chosen per module by kohya's dynamic methods, capped at `max_rank`.

    sv_ratio: keep the singular values ≥ largest / param. sv_cumulative: the smallest rank whose
    singular values sum to ≥ param of their total. sv_fro: the smallest rank keeping ≥ param of the
    Frobenius norm."""
    if method not in DYNAMIC_METHODS:
        raise ValueError(f"dynamic_method must be one of {', '.join(DYNAMIC_METHODS)}, got {method!r}")
    s = s.float()
    if float(s[0]) == 0:
        return 1
    if method == "sv_ratio":
        if param < 1:
            raise ValueError(f"dynamic_param for sv_ratio is a ratio ≥ 1 (largest / smallest kept), got {param}")
        rank = int((s >= s[0] / param).sum())
    else:
        if not 0 < param <= 1:
            raise ValueError(f"dynamic_param for {method} is a fraction in (0, 1], got {param}")
        if method == "sv_cumulative":
            kept = torch.cumsum(s, 0) / s.sum()
        else:
            kept = torch.sqrt(torch.cumsum(s.pow(2), 0) / s.pow(2).sum())
        rank = int((kept < param - 1e-7).sum()) + 1
    return max(1, min(rank, max_rank, s.numel()))
