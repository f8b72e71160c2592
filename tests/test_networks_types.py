"""Every network type of kohya_ss's LoRA_type list builds from a config, trains a step, and saves a file
with kohya's metadata that the save-time self-check accepts; Kohya DyLoRA, block-wise ranks and learning
rates, LoRA+ and scale_weight_norms behave as in sd-scripts."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from trainer.config import ConfigError, parse_config
from trainer.models.tiny import build_tiny_components
from trainer.networks import verify_lora_file
from trainer.networks.blocks import block_index, block_lr_weights
from trainer.networks.registry import LORA_TYPES, NETWORK_TYPES, build_network, kohya_lora_type, lora_type_for

REQUIRED = {"pretrained_model_name_or_path": "m.safetensors", "train_data_dir": "data", "output_dir": "out",
            "output_name": "x"}


def tiny_base(family="sd1"):
    c = build_tiny_components(family, seed=0)
    tes = [c["text_encoder"]] + ([c["text_encoder_2"]] if family == "sdxl" else [])
    return SimpleNamespace(unet=c["unet"], text_encoders=tes, family=family, v_prediction=False), c


def config(**values):
    return parse_config("lora", {**REQUIRED, "network_dim": 4, "network_alpha": 2, **values})


def train_steps(base, network, steps=1, lr=1e-2):
    network.apply_to()
    groups = network.prepare_optimizer_params(None, None, lr)
    opt = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=lr)
    network.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ids = torch.randint(0, 100, (1, 8), generator=g)
    for _ in range(steps):
        hidden = base.text_encoders[0](ids).last_hidden_state
        loss = base.unet(x, 10, hidden).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return groups


@pytest.mark.parametrize("lora_type", [t for t in LORA_TYPES if t not in ("LyCORIS/LoHa", "LyCORIS/LoKr",
                                                                          "LyCORIS/iA3")
                                       and NETWORK_TYPES[t].trains_on("sd1")])
def test_every_network_type_trains_a_step_and_saves_a_file_verify_accepts(lora_type, tmp_path):
    """(LoHa, LoKr, iA3 and DoRA go through the whole trainer in test_networks_lycoris.py; Flux1 OFT, a FLUX.1
    module, in test_flux_oft.py.)"""
    base, _ = tiny_base()
    kind = NETWORK_TYPES[lora_type]
    cfg = config(LoRA_type=lora_type, conv_dim=4 if kind.builder == "dylora" else 2, conv_alpha=1, unit=2)
    network = build_network(base, cfg)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    train_steps(base, network)
    after = network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "one step changed the network"

    path = tmp_path / "net.safetensors"
    network.save_weights(path, "fp16")
    report = verify_lora_file(path, base)
    assert report.ok, report.to_text()
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    assert meta["ss_network_module"] == kind.network_module
    args = json.loads(meta["ss_network_args"]) if meta["ss_network_args"] != "None" else {}
    if kind.builder == "lycoris":
        assert args["algo"] == kind.algo and args["preset"] == "full"
    if kind.builder == "dylora":
        assert args["unit"] == "2"


def test_kohya_lora_types_map_to_the_studios_types_and_back():
    assert kohya_lora_type("LoCon") == "LyCORIS/LoCon"  # what kohya_ss GUI v21 called LyCORIS LoCon
    assert kohya_lora_type("LyCORIS/LoHa") == "LyCORIS/LoHa"
    assert kohya_lora_type("Flux1") is None and kohya_lora_type("LoRA-FA") == "LoRA-FA"
    assert lora_type_for("lycoris.kohya", ["algo=loha", "conv_dim=4"]) == "LyCORIS/LoHa"
    assert lora_type_for("lycoris.kohya", 'preset=full algo="lora"') == "LyCORIS/LoCon"
    assert lora_type_for("lycoris.kohya", {"algo": "diag-oft"}) == "LyCORIS/Diag-OFT"
    assert lora_type_for("networks.lora", ["conv_dim=4"]) == "Kohya LoCon"
    assert lora_type_for("networks.dylora", []) == "Kohya DyLoRA"
    assert lora_type_for("networks.lora_fa", []) == "LoRA-FA"
    assert lora_type_for("networks.oft", []) is None
    for t in NETWORK_TYPES.values():  # the registry's own pairs come back to their type
        args = [f"algo={t.algo}"] + (["conv_dim=2"] if t.lora_type == "Kohya LoCon" else [])
        assert lora_type_for(t.network_module, args) == t.lora_type


def test_a_config_gives_the_sd_scripts_network_module_and_args_that_train_the_same():
    from trainer.networks.options import sd_scripts_network

    module, args = sd_scripts_network(config(LoRA_type="LyCORIS/LoKr", factor=8, dora_wd=True, conv_dim=2))
    assert module == "lycoris.kohya"
    assert {"preset=full", "algo=lokr", "conv_dim=2", "dora_wd=True", "wd_on_output=True", "factor=8"} <= set(args)
    assert lora_type_for(module, args) == "LyCORIS/LoKr"
    module, args = sd_scripts_network(config(LoRA_type="Kohya LoCon", conv_dim=4, down_lr_weight="sine"))
    assert (module, args) == ("networks.lora", ["conv_dim=4", "conv_alpha=1.0", "down_lr_weight=sine"])
    assert sd_scripts_network(config(LoRA_type="Kohya DyLoRA", unit=2)) == ("networks.dylora", ["unit=2"])


def test_kohya_dylora_trains_unit_ranks_per_step_and_saves_a_plain_lora(monkeypatch):
    """sd-scripts networks.dylora: a random multiple of `unit` picks the ranks that learn this step; the
    other ranks get no gradient at all, and the branch is scaled by alpha/dim·√(dim/(b+unit))."""
    from trainer.networks.dylora import DyLoRAModule

    layer = torch.nn.Linear(16, 8)
    m = DyLoRAModule("lora_te_x", layer, lora_dim=4, alpha=2, unit=2)
    with torch.no_grad():
        for p in m.lora_B:
            p.fill_(0.1)
    m.apply_to()
    m.train()
    monkeypatch.setattr("trainer.networks.dylora.torch.randint", lambda *a: torch.tensor([3]))  # b = 3 - 3 % 2
    x = torch.randn(3, 16)
    out = layer(x)
    out.sum().backward()
    grads = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.lora_A]
    assert grads == [False, False, True, True]
    m.restore()
    base_out = layer(x)
    delta = x @ m.stacked("down").T @ m.stacked("up").T * (2 / 4) * (4 / 4) ** 0.5
    torch.testing.assert_close(out - base_out, delta, atol=1e-5, rtol=1e-4)
    sd = m.state_dict()
    assert set(sd) == {"lora_down.weight", "lora_up.weight", "alpha"} and sd["lora_down.weight"].shape == (4, 16)


def test_block_dims_and_block_lr_weights_follow_sd_scripts():
    base, _ = tiny_base()
    # sd-scripts' numbering: down_blocks.1.attentions.0 is IN04, mid is 12, up_blocks.1.attentions.2 is OUT05 → 18
    assert block_index("lora_unet_down_blocks_1_attentions_0_proj_in", "sd1") == 4
    assert block_index("lora_unet_mid_block_attentions_0_proj_in", "sd1") == 12
    assert block_index("lora_unet_up_blocks_1_attentions_2_proj_out", "sd1") == 18
    assert block_index("lora_unet_input_blocks_4_1_proj_in", "sdxl") == 5
    assert block_index("lora_te_text_model_encoder_layers_0_mlp_fc1", "sd1") == -1
    weights = block_lr_weights("sd1", down="zeros+0.5", mid="2", up="1,1,1,1,1,0", zero_threshold="0.1")
    assert len(weights) == 25 and weights[1] == 0.5 and weights[12] == 2 and weights[18] == 0

    dims = ",".join(["2"] * 12 + ["6"] + ["3"] * 12)
    cfg = config(block_dims=dims, block_alphas=",".join(["1"] * 25), mid_lr_weight="2", up_lr_weight="1,1,1,1,1,0",
                 unet_lr=1e-3, text_encoder_lr=1e-4)
    network = build_network(base, cfg)
    ranks = {m.lora_name: m.lora_dim for m in network.unet_loras}
    assert {r for n, r in ranks.items() if "mid_block" in n} == {6}
    assert {r for n, r in ranks.items() if "down_blocks" in n} == {2}
    assert not any(block_index(n, "sd1") == 18 for n in ranks), "a block with lr weight 0 is left out"
    assert {m.lora_dim for m in network.text_encoder_loras} == {4}
    groups = {g["name"]: g["lr"] for g in network.prepare_optimizer_params(1e-4, 1e-3, 1e-2)}
    assert groups["unet block 12"] == pytest.approx(2e-3) and groups["unet block 4"] == pytest.approx(1e-3)
    assert groups["textencoder"] == 1e-4

    assert config(mid_lr_weight=2).mid_lr_weight == "2"  # a number from an sd-scripts TOML reads as text
    with pytest.raises(ConfigError, match="block_dims"):
        config(block_dims="1,2,3")
    with pytest.raises(ConfigError, match="down_lr_weight"):
        config(down_lr_weight="wavy")
    with pytest.raises(ConfigError, match="block_dims.*LyCORIS/LoHa|LyCORIS/LoHa.*block_dims"):
        config(LoRA_type="LyCORIS/LoHa", block_dims=dims)


@pytest.mark.parametrize("lora_type", ["Standard", "LyCORIS/LoCon"])
def test_loraplus_ratios_put_the_up_matrices_in_their_own_group(lora_type):
    base, _ = tiny_base()
    network = build_network(base, config(LoRA_type=lora_type, conv_dim=2))
    groups = network.prepare_optimizer_params(1e-4, 1e-3, 1e-2, loraplus_lr_ratio=4, loraplus_unet_lr_ratio=16)
    by_name = {g["name"]: g for g in groups}
    assert by_name["unet plus"]["lr"] == pytest.approx(16e-3)
    assert by_name["textencoder plus"]["lr"] == pytest.approx(4e-4)
    ups = {id(p) for m in network.loras for n, p in m.named_parameters() if "lora_up" in n}
    assert {id(p) for p in by_name["unet plus"]["params"] + by_name["textencoder plus"]["params"]} == ups


def test_lora_training_kind_reaches_loraplus_and_scale_weight_norms():
    """The options are reachable from a config: LoraKind builds the LoRA+ groups and applies max-norm
    after each optimizer step, and the saved file records them (ss_loraplus_lr_ratio, ss_scale_weight_norms)."""
    from trainer.kinds import LoraKind

    base, _ = tiny_base()
    kind = LoraKind(config(LoRA_type="Kohya LoCon", conv_dim=2, loraplus_lr_ratio=8, scale_weight_norms=0.01,
                           learning_rate=1e-3))
    groups = kind.prepare(base)
    assert {g["name"] for g in groups} == {"textencoder", "textencoder plus", "unet", "unet plus"}
    with torch.no_grad():
        for m in kind.network.loras:
            m.lora_up.weight.normal_(0, 1)
    kind.after_optimizer_step(1)
    assert kind.max_norm_stats["keys_scaled"] == len(kind.network.loras)
    assert max(float(m.delta_weight(1.0).detach().norm()) for m in kind.network.loras) <= 0.01 * 1.001
    assert kind.network_metadata() == {"ss_loraplus_lr_ratio": "8.0", "ss_scale_weight_norms": "0.01"}


def test_lycoris_preset_and_type_options_reach_the_modules():
    base, _ = tiny_base()
    attn = build_network(base, config(LoRA_type="LyCORIS/LoHa", LyCORIS_preset="attn-only"))
    assert attn.loras and all("attn" in n for n in attn.parts)
    conv_only = build_network(base, config(LoRA_type="LyCORIS/LoCon", LyCORIS_preset="unet-convblock-only",
                                           conv_dim=2, use_tucker=True))
    assert all(p == "unet" for p in conv_only.parts.values())
    assert any("lora_mid.weight" in k for k in conv_only.state_dict()), "use_tucker gives 3×3 convs a lora_mid"
    per_input = build_network(base, config(LoRA_type="LyCORIS/LoCon", dora_wd=True, wd_on_output=False))
    ds = next(v for k, v in per_input.state_dict().items() if k.endswith("dora_scale"))
    assert ds.shape[0] == 1, "wd_on_output off: one magnitude per input channel (AUTOMATIC1111's layout)"
    ia3 = build_network(base, config(LoRA_type="LyCORIS/iA3", train_on_input=True))
    assert all(int(v) == 1 for k, v in ia3.state_dict().items() if k.endswith("on_input"))


def test_lycoris_network_resumes_from_its_training_state():
    """save_state/resume keep every LyCORIS parameter (DyLoRA's file layout cannot be loaded back)."""
    from trainer.kinds import LoraKind

    base, _ = tiny_base()
    cfg = config(LoRA_type="LyCORIS/DyLoRA", conv_dim=2, unit=2)
    first = LoraKind(cfg)
    first.prepare(base)
    with torch.no_grad():
        for p in first.network.parameters():
            p.add_(0.01)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    base2, _ = tiny_base()
    second = LoraKind(cfg)
    second.prepare(base2)
    second.load_state_dict(state)
    for k, v in second.state_dict().items():
        torch.testing.assert_close(v, state[k])


@pytest.mark.parametrize("lora_type", ["Kohya DyLoRA", "LyCORIS/LoCon", "LyCORIS/DyLoRA"])
def test_plain_lora_layout_types_load_in_diffusers_with_every_key(lora_type, tmp_path):
    """Their files hold only lora_down/lora_up/alpha, so diffusers (the strictest client) takes every key."""
    from test_networks_clients import load_in_diffusers, peft_layers, pipeline

    base, _ = tiny_base()
    network = build_network(base, config(LoRA_type=lora_type, conv_dim=4, conv_alpha=1, unit=2))
    train_steps(base, network)
    path = tmp_path / "net.safetensors"
    network.save_weights(path, "float")
    pipe = pipeline("sd1")
    assert load_in_diffusers(pipe, path) == []
    assert len(peft_layers(pipe.unet)) == len(network.unet_loras)


def test_sdxl_lycoris_files_use_kohyas_sgm_names_that_the_clients_map(tmp_path):
    """sd-scripts names SDXL U-Net modules after the original (SGM) layers; ComfyUI's key map has
    lora_unet_<ldm path> for every layer and A1111 falls back from lora_unet to diffusion_model."""
    from test_networks_clients import original_unet_layers

    base, _ = tiny_base("sdxl")
    network = build_network(base, config(LoRA_type="LyCORIS/LoKr", conv_dim=2, dora_wd=True))
    with torch.no_grad():  # as if trained
        for p in network.parameters():
            p.add_(0.01)
    path = tmp_path / "sdxl-dokr.safetensors"
    network.save_weights(path)
    assert verify_lora_file(path, base).ok
    layers = original_unet_layers(base.unet)
    unet_names = [n for n in network.parts if n.startswith("lora_unet_")]
    assert unet_names and all(n[len("lora_unet_"):] in layers for n in unet_names)
    assert {n.split("_")[1] for n in network.parts} == {"te1", "te2", "unet"}
