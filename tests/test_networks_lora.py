"""LoRA / LoCon modules on a tiny SD1 base: what a user training a LoRA relies on."""

import pytest
import torch
from torch import nn

from trainer.models.tiny import build_tiny_components
from trainer.networks import LoRAModule, create_network


@pytest.fixture(scope="module")
def sd1():
    c = build_tiny_components("sd1", seed=0)
    c["family"] = "sd1"
    return c


def unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ehs = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([500]), ehs


def run_unet(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def assert_same_output(actual, expected, base):
    """Equal up to float round-off, which the tiny U-Net's GroupNorms amplify to ~1e-4; the LoRA's
    own effect must be far larger than that for the comparison to mean anything."""
    effect = (expected - base).abs().max().item()
    error = (actual - expected).abs().max().item()
    assert effect > 0.02, f"LoRA effect too small to test ({effect})"
    assert error < 5e-4, f"outputs differ by {error} (LoRA effect {effect})"


def randomize(net, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * std)


def test_a_new_lora_starts_as_a_no_op_and_keeps_the_base_state_dict(sd1):
    unet = sd1["unet"]
    keys_before = list(unet.state_dict())
    inputs = unet_inputs(unet)
    base_out = run_unet(unet, inputs)
    net = create_network(sd1, network_dim=4, network_alpha=1, conv_dim=4, conv_alpha=1).apply_to()
    try:
        for m in net.loras:
            assert torch.count_nonzero(m.lora_up.weight) == 0, "lora_up starts at zero"
            assert torch.count_nonzero(m.lora_down.weight) > 0, "lora_down starts random (Kaiming)"
        assert torch.equal(run_unet(unet, inputs), base_out)
        assert list(unet.state_dict()) == keys_before, "wrapping must not rename base weights"
        assert not any("lora" in k for k in unet.state_dict())
    finally:
        net.restore()
    assert all("forward" not in m.org_module.__dict__ for m in net.loras)


def test_lora_adds_multiplier_times_alpha_over_dim_times_up_down():
    base = nn.Linear(6, 5)
    lora = LoRAModule("lora_unet_x", base, lora_dim=4, alpha=2.0)
    with torch.no_grad():
        lora.lora_up.weight.normal_()
    lora.apply_to()
    x = torch.randn(3, 6)
    expected_delta = x @ (lora.lora_up.weight @ lora.lora_down.weight).T * (2.0 / 4)
    base_out = nn.functional.linear(x, base.weight, base.bias)
    assert lora.scale == 0.5
    torch.testing.assert_close(base(x), base_out + expected_delta)
    lora.multiplier = 0.25
    torch.testing.assert_close(base(x), base_out + 0.25 * expected_delta)
    lora.restore()
    torch.testing.assert_close(base(x), base_out)


def test_alpha_zero_or_missing_means_no_scaling_like_kohya():
    assert LoRAModule("a", nn.Linear(3, 3), lora_dim=8, alpha=0).scale == 1.0
    assert LoRAModule("a", nn.Linear(3, 3), lora_dim=8, alpha=None).scale == 1.0


def test_dropouts_act_only_in_training_mode(sd1):
    unet = sd1["unet"]
    inputs = unet_inputs(unet)
    plain = create_network(sd1, network_dim=4, conv_dim=2, train_text_encoder=False)
    randomize(plain)
    plain.apply_to()
    expected = run_unet(unet, inputs)
    plain.restore()

    net = create_network(sd1, network_dim=4, conv_dim=2, train_text_encoder=False,
                         dropout=0.5, rank_dropout=0.5, module_dropout=0.5)
    net.load_state_dict(plain.state_dict())
    net.apply_to()
    try:
        net.eval()
        torch.testing.assert_close(run_unet(unet, inputs), expected)
        net.train()  # the base stays in eval; only the LoRA branch drops out
        torch.manual_seed(0)
        a = run_unet(unet, inputs)
        b = run_unet(unet, inputs)
        assert not torch.allclose(a, expected) and not torch.allclose(a, b)
    finally:
        net.restore()


def test_merge_matches_the_live_lora_is_not_applied_twice_and_unmerge_restores_the_base(sd1):
    unet = sd1["unet"]
    inputs = unet_inputs(unet)
    base_out = run_unet(unet, inputs)
    originals = {k: v.clone() for k, v in unet.state_dict().items()}
    net = create_network(sd1, network_dim=4, network_alpha=2, conv_dim=3, conv_alpha=1.5, multiplier=0.7)
    randomize(net)
    net.apply_to()
    live = run_unet(unet, inputs)
    net.restore()

    net.merge_to()
    assert net.merged
    assert_same_output(run_unet(unet, inputs), live, base_out)
    changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, originals[k])]
    assert len(changed) == len(net.unet_loras), "every wrapped U-Net layer (convs too) is merged"
    net.apply_to()  # a merged network that is also applied must not add its LoRA a second time
    try:
        assert_same_output(run_unet(unet, inputs), live, base_out)
    finally:
        net.restore()
    net.unmerge()
    assert not net.merged
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(v, originals[k], atol=1e-6, rtol=0)


def test_locon_puts_conv_dim_on_3x3_convs_and_network_dim_on_the_rest(sd1):
    net = create_network(sd1, network_dim=8, network_alpha=4, conv_dim=2, conv_alpha=1)
    by_name = {m.lora_name: m for m in net.loras}
    conv1 = by_name["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv1.lora_dim == 2 and float(conv1.alpha) == 1.0
    assert tuple(conv1.lora_down.weight.shape[2:]) == (3, 3)
    assert tuple(conv1.lora_up.weight.shape[2:]) == (1, 1)
    assert by_name["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].lora_dim == 8
    shortcut = [m for n, m in by_name.items() if n.endswith("conv_shortcut")]
    assert shortcut and all(m.lora_dim == 8 for m in shortcut)
    assert "lora_unet_down_blocks_0_downsamplers_0_conv" in by_name
    assert any(n.endswith("upsamplers_0_conv") for n in by_name)

    plain = create_network(sd1, network_dim=8)
    assert not any("resnets" in n or "samplers" in n for n in (m.lora_name for m in plain.loras))


def test_train_unet_only_or_text_encoder_only(sd1):
    unet_only = create_network(sd1, train_text_encoder=False)
    assert unet_only.loras and all(m.lora_name.startswith("lora_unet_") for m in unet_only.loras)
    te_only = create_network(sd1, train_unet=False)
    assert te_only.loras and all(m.lora_name.startswith("lora_te_") for m in te_only.loras)
    with pytest.raises(ValueError, match="no modules"):
        create_network(sd1, train_unet=False, train_text_encoder=False)


def test_optimizer_groups_use_separate_learning_rates_and_lr_zero_freezes(sd1):
    net = create_network(sd1, network_dim=4)
    groups = net.prepare_optimizer_params(text_encoder_lr=5e-5, unet_lr=1e-4, default_lr=1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("textencoder", 5e-5), ("unet", 1e-4)]
    te_params = {id(p) for m in net.text_encoder_loras for p in m.parameters()}
    assert {id(p) for p in groups[0]["params"]} == te_params

    groups = net.prepare_optimizer_params(text_encoder_lr=None, unet_lr=None, default_lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3]

    groups = net.prepare_optimizer_params(text_encoder_lr=0, unet_lr=1e-4, default_lr=1e-3)
    assert [g["name"] for g in groups] == ["unet"]
    assert all(not p.requires_grad for m in net.text_encoder_loras for p in m.parameters())
    assert all(p.requires_grad for m in net.unet_loras for p in m.parameters())

    plus = net.prepare_optimizer_params(1e-4, 1e-4, 1e-4, loraplus_lr_ratio=16)
    assert [g["lr"] for g in plus] == [1e-4, 1.6e-3, 1e-4, 1.6e-3]
    torch.optim.AdamW(plus)  # torch accepts the groups as they are


def test_a_training_step_updates_only_the_lora_weights(sd1):
    unet = sd1["unet"]
    net = create_network(sd1, network_dim=4, conv_dim=2, rank_dropout=0.1, train_text_encoder=False).apply_to()
    try:
        net.train()
        opt = torch.optim.SGD(net.prepare_optimizer_params(None, 1e-2, 1e-2), lr=1e-2)
        base_before = {k: v.clone() for k, v in unet.state_dict().items()}
        x, t, ehs = unet_inputs(unet)
        loss = unet(x, t, ehs).sample.pow(2).mean()
        loss.backward()
        opt.step()
        assert any(torch.count_nonzero(m.lora_up.weight) for m in net.loras)
        assert all(torch.equal(v, base_before[k]) for k, v in unet.state_dict().items())
    finally:
        net.restore()


def test_sdxl_text_encoders_can_have_their_own_learning_rates():
    sdxl = build_tiny_components("sdxl", seed=0)
    net = create_network(sdxl["unet"], [sdxl["text_encoder"], sdxl["text_encoder_2"]], "sdxl")
    groups = net.prepare_optimizer_params(text_encoder_lr=[1e-5, 0], unet_lr=1e-4, default_lr=1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("textencoder1", 1e-5), ("unet", 1e-4)]
    te1 = {id(p) for m in net.text_encoder_loras if m.lora_name.startswith("lora_te1_") for p in m.parameters()}
    assert {id(p) for p in groups[0]["params"]} == te1
    assert all(not p.requires_grad for m in net.text_encoder_loras if m.lora_name.startswith("lora_te2_")
               for p in m.parameters())
