"""blocks_to_swap: swapped FLUX.1 blocks sit in host memory between their runs, visit the compute device only
while they run (re-visited by checkpointed backward), and training gives bit-identical weights to no swap
on CPU with the same seed."""
from __future__ import annotations

import torch
from test_flux_lora import flux_config
from test_train_support import make_dataset, run_trainer, write_config

from trainer.config import config_for
from trainer.models.flux_forward import make_denoise
from trainer.models.tiny_dit import build_tiny_flux, write_tiny_flux
from trainer.networks.files import read_lora_file
from trainer.train.block_swap import install_block_swap, swappable_blocks


def test_swapped_blocks_run_from_a_device_copy_and_go_home_afterwards():
    from types import SimpleNamespace

    tr = build_tiny_flux(0)["transformer"]
    blocks = swappable_blocks(tr)
    assert len(blocks) == 4  # 2 double + 2 single, in execution order
    call = make_denoise(SimpleNamespace(extra={}), config_for("lora", flux1_checkbox=True))
    x, t, h, p = torch.randn(1, 16, 8, 8), torch.tensor([400.0]), torch.randn(1, 16, 32), torch.randn(1, 32)
    want = call(tr, x, t, h, p)
    swap = install_block_swap(SimpleNamespace(unet=tr), 3, "cpu")
    homes = {id(b): [w.data_ptr() for w in b.parameters()] for b in blocks[-3:]}
    seen = []
    blocks[-1].register_forward_pre_hook(lambda m, a: seen.append([w.data_ptr() for w in m.parameters()]))
    got = call(tr, x, t, h, p)
    assert torch.equal(want, got) and swap.swaps_in == 3
    assert seen and seen[0] != homes[id(blocks[-1])], "inside its run a block uses the device copy"
    assert all([w.data_ptr() for w in b.parameters()] == homes[id(b)] for b in blocks[-3:]), "and goes home after"
    tr.to("cpu", torch.float32)  # Module.to (accelerate's placement) leaves the swapped blocks alone
    assert all([w.data_ptr() for w in b.parameters()] == homes[id(b)] for b in blocks[-3:])


def test_training_with_block_swap_gives_the_same_weights_as_without(tmp_path):
    files = write_tiny_flux(tmp_path / "flux")
    data = make_dataset(tmp_path / "data", images=2)
    finals = []
    for name, n in (("plain", 0), ("swap", 3)):
        config = flux_config(files, data, tmp_path / name, epoch=2, blocks_to_swap=n, gradient_checkpointing=True,
                             timestep_sampling="shift", model_prediction_type="raw")
        rc, events, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
        assert rc == 0, err[-3000:]
        if n:
            assert "blocks_to_swap: 3 of 4 transformer blocks" in err
        finals.append(read_lora_file(tmp_path / name / "toy.safetensors")[0])
    plain, swapped = finals
    assert plain.keys() == swapped.keys()
    assert all(torch.equal(plain[k], swapped[k]) for k in plain)  # bit-exact on CPU, same seed
