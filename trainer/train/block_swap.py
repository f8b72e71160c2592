"""``blocks_to_swap``: the last N transformer blocks of a DiT live in host memory and visit the GPU only
while they run (kohya's block swap for FLUX.1 / SD3 on 8–16 GB cards).

Each swapped block keeps its frozen weights (and buffers) in pinned host memory. A forward pre-hook
copies them to the compute device (non-blocking, from pinned memory); a forward hook points the block
back at the host copies, so the device copies are freed as soon as nothing refers to them. Base weights
are frozen (LoRA), so nothing is ever copied back. With gradient checkpointing the backward pass re-runs
each block's forward, which swaps the block in again for its backward; without it autograd keeps the
device copies of every block until backward, and little is saved (a warning says so).

The blocks are excluded from ``Module.to`` (accelerate's device placement moves the model once more
after this is installed): only the hooks move them. On CPU the "transfer" is a copy within host memory,
so the whole mechanism runs in the CPU tests and must give bit-identical training.
Not yet: prefetching the next block on a side stream (the copies are issued when the block starts).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def swappable_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The transformer's block lists in execution order (FLUX: double then single stream; SD3: joint)."""
    blocks: list[nn.Module] = []
    for name, child in transformer.named_children():
        if isinstance(child, nn.ModuleList) and name.endswith("blocks"):
            blocks.extend(child)
    return blocks


class BlockSwap:
    def __init__(self, blocks: list[nn.Module], device: torch.device):
        self.device = torch.device(device)
        self.blocks = list(blocks)
        self.swaps_in = 0
        self._homes: dict[int, list[tuple[nn.Module, str, bool, torch.Tensor]]] = {}
        pin = self.device.type == "cuda"
        for block in self.blocks:
            homes = []
            for module in block.modules():
                for name, p in module.named_parameters(recurse=False):
                    host = p.data.to("cpu")
                    homes.append((module, name, True, host.pin_memory() if pin else host))
                    p.data = homes[-1][3]
                for name, b in module.named_buffers(recurse=False):
                    host = b.to("cpu")
                    homes.append((module, name, False, host.pin_memory() if pin else host))
                    module._buffers[name] = homes[-1][3]
            self._homes[id(block)] = homes
            block._apply = _kept_home(block)  # Module.to / accelerate's placement must not move it
            block.register_forward_pre_hook(self._swap_in)
            block.register_forward_hook(self._swap_out)
        if pin:
            torch.cuda.empty_cache()

    def _swap_in(self, block, args):
        self.swaps_in += 1
        for module, name, is_param, host in self._homes[id(block)]:
            on_device = host.to(self.device, non_blocking=True) if self.device.type != "cpu" else host.clone()
            if is_param:
                module._parameters[name].data = on_device
            else:
                module._buffers[name] = on_device

    def _swap_out(self, block, args, output):
        for module, name, is_param, host in self._homes[id(block)]:
            if is_param:
                module._parameters[name].data = host
            else:
                module._buffers[name] = host
        return output


def _kept_home(block: nn.Module):
    def _apply(fn, recurse=True):
        return block  # the swap hooks alone move this block's tensors

    return _apply


def install_block_swap(base, n: int, device, warn=None, checkpointing: bool = True) -> BlockSwap | None:
    """Swap the last ``n`` blocks of the base's transformer (a DiT family); None when n is 0."""
    if not n:
        return None
    blocks = swappable_blocks(base.unet)
    if not blocks or type(base.unet).__name__ == "UNet2DConditionModel":
        raise ValueError("blocks_to_swap works on the transformer blocks of FLUX.1 / SD3; this base has none")
    if n >= len(blocks):
        raise ValueError(f"blocks_to_swap {n} must be below the transformer's {len(blocks)} blocks")
    if not checkpointing and warn is not None:
        warn("blocks_to_swap without gradient_checkpointing keeps every block's weights on the GPU until the "
             "backward pass, so it saves little memory: turn gradient_checkpointing on.")
    swap = BlockSwap(blocks[-n:], device)
    logger.info("blocks_to_swap: %d of %d transformer blocks stay in host memory between their runs", n, len(blocks))
    return swap
