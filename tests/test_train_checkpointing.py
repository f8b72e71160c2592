"""Gradient checkpointing: selective keeps less than none and more than full, gradients do not change,
and a run with it on trains to the end."""
from __future__ import annotations

import math
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from test_train_support import lora_config, make_dataset, run_trainer, write_config

MODES = ("none", "selective", "full")


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages ops create while active that are still alive. (saved_tensors_hooks cannot
    count them: inside a checkpoint only the checkpoint's own hooks see what is saved.)"""

    def __init__(self):
        super().__init__()
        self.live, self._seen = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            storage = t.untyped_storage() if isinstance(t, torch.Tensor) else None
            if storage is not None and id(storage) not in inputs and id(storage) not in self._seen:
                self._seen.add(id(storage))
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        return out

    def _free(self, key, nbytes):
        self._seen.discard(key)
        self.live -= nbytes


def tiny_unet_with_lora(mode: str, dropout: float = 0.0, random_inside: bool = True):
    """The tiny SD1 U-Net (seeded, fp32) with a trained-looking LoRA applied, checkpointed as `mode`."""
    from trainer.models.tiny import build_tiny_components
    from trainer.networks import create_network
    from trainer.train.precision import enable_gradient_checkpointing

    torch.set_num_threads(1)
    unet = build_tiny_components("sd1", 0)["unet"]
    torch.manual_seed(0)
    network = create_network(unet, [], "sd1", network_dim=4, network_alpha=4, dropout=dropout,
                             train_text_encoder=False)
    network.apply_to()
    for lora in network.loras:  # lora_up starts at zero, which would leave lora_down without gradient
        torch.nn.init.normal_(lora.lora_up.weight, std=0.05)
    network.requires_grad_(True).train()
    if mode != "none":
        enable_gradient_checkpointing(unet, [], False, mode=mode, random_inside=random_inside)
    unet.train()
    return unet, network


def unet_inputs(unet):
    g = torch.Generator().manual_seed(1)
    size = unet.config.sample_size
    return (torch.randn(2, 4, size, size, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 77, unet.config.cross_attention_dim, generator=g))


def activation_bytes(mode: str) -> int:
    unet, _ = tiny_unet_with_lora(mode)
    meter = LiveBytes()
    with meter:
        out = unet(*unet_inputs(unet)).sample
        kept = meter.live - out.untyped_storage().nbytes()
    out.sum().backward()  # the graph is complete and usable
    return kept


def test_selective_checkpointing_keeps_fewer_activations_than_none_and_more_than_full():
    none, selective, full = (activation_bytes(mode) for mode in MODES)
    assert full < selective < none
    # the element-wise layers it recomputes hold a good share of the memory, not a rounding error
    assert selective < 0.85 * none, (none, selective, full)


def lora_gradients(dropout: float, random_inside: bool = True) -> dict:
    grads = {}
    for mode in MODES:
        unet, network = tiny_unet_with_lora(mode, dropout=dropout, random_inside=random_inside)
        noisy, timesteps, hidden = unet_inputs(unet)
        torch.manual_seed(5)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, hidden).sample, noisy)
        loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in network.named_parameters() if p.requires_grad}
    return grads


def assert_same_gradients(grads: dict) -> None:
    # the tiny U-Net's mid block sees a 1×1 feature map: its self-attention has one token, so the softmax is
    # constant and to_q/to_k get exactly zero gradient; every other LoRA weight must get one
    single_token = ("mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
                    "mid_block_attentions_0_transformer_blocks_0_attn1_to_k")
    assert all(g.abs().sum() > 0 for n, g in grads["none"].items() if not any(s in n for s in single_token))
    for mode in ("selective", "full"):
        assert grads[mode].keys() == grads["none"].keys()
        for name, grad in grads["none"].items():
            torch.testing.assert_close(grads[mode][name], grad, rtol=1e-5, atol=1e-7, msg=f"{mode}: {name}")


def test_lora_gradients_are_the_same_with_none_selective_and_full_checkpointing():
    """With LoRA dropout on, too: the recomputed forward must draw the same dropout masks."""
    assert_same_gradients(lora_gradients(dropout=0.3))


def test_without_dropout_the_rng_state_is_not_saved_and_gradients_do_not_change():
    """Nothing random runs in the blocks, so the recomputation needs no RNG bookkeeping (which would also
    stop the step from being captured in a CUDA graph on older PyTorch)."""
    assert_same_gradients(lora_gradients(dropout=0.0, random_inside=False))


def test_selective_policy_recomputes_widening_projections_and_keeps_convolutions_and_attention_inputs():
    """A LoRA's rank-16 up projection and GEGLU's 320→2560 projection write many values from few summed
    ones: cheap to redo, costly to keep. A 3×3 convolution or a 320→320 projection is kept."""
    from torch.utils.checkpoint import CheckpointPolicy

    from trainer.train.checkpointing import save_expensive_outputs

    aten = torch.ops.aten
    policy = {
        "lora_up": save_expensive_outputs(None, aten.mm.default, torch.empty(8, 16), torch.empty(16, 320)),
        "geglu": save_expensive_outputs(None, aten.addmm.default, torch.empty(2560), torch.empty(8, 320),
                                        torch.empty(320, 2560)),
        "silu": save_expensive_outputs(None, aten.silu.default, torch.empty(8)),
        "to_q": save_expensive_outputs(None, aten.mm.default, torch.empty(8, 320), torch.empty(320, 320)),
        "lora_down": save_expensive_outputs(None, aten.mm.default, torch.empty(8, 320), torch.empty(320, 16)),
        "conv": save_expensive_outputs(None, aten.convolution.default, torch.empty(1, 320, 8, 8),
                                       torch.empty(320, 320, 3, 3)),
    }
    recompute = {name for name, choice in policy.items() if choice == CheckpointPolicy.PREFER_RECOMPUTE}
    assert recompute == {"lora_up", "geglu", "silu"}
    assert all(policy[name] == CheckpointPolicy.MUST_SAVE for name in policy.keys() - recompute)


def test_a_training_run_with_selective_gradient_checkpointing_finishes(tmp_path, tiny_model_dir):
    """bf16 autocast on the CPU, text encoder LoRA trained too (it keeps Hugging Face's checkpointing)."""
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), tmp_path / "out", epoch=1,
                         gradient_checkpointing=True, gradient_checkpointing_mode="selective",
                         mixed_precision="bf16")
    rc, events, err = run_trainer(write_config(config, tmp_path / "c.json"))
    assert rc == 0, err[-3000:]
    assert events[-1]["type"] == "done"
    steps = [e for e in events if e["type"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total"] == 4
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert (tmp_path / "out" / "toy.safetensors").is_file()
