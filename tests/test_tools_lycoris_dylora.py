"""Merge LyCORIS and Extract DyLoRA on the tiny models.

A user trains a LoHa / LoKr / DoRA / full LyCORIS file and bakes it into the checkpoint: every changed
layer of the merged model computes what the base layer computes with the LyCORIS network running on it
(LyCORIS' own forward, the network as trained), at the chosen weight. A user trains a DyLoRA and cuts it
to a lower rank: the LoRA written applies alpha/r · up[:, :r] @ down[:r] of the DyLoRA (sd-scripts' cut).
Tolerances: fp32 throughout, only the summation order differs (≈1e-5).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainer.config import parse_config
from trainer.models import load_base_model
from trainer.models.tiny import build_tiny_components
from trainer.networks import verify_lora_file
from trainer.networks.naming import all_targets
from trainer.networks.registry import build_network
from trainer.tools.extract_dylora import extract_dylora
from trainer.tools.lora_io import read_modules
from trainer.tools.merge_lycoris import merge_lycoris
from trainer.tools.output import ToolError

from test_train_support import trainer_cli

REQUIRED = {"pretrained_model_name_or_path": "m.safetensors", "train_data_dir": "data", "output_dir": "out",
            "output_name": "x"}


def tiny_base(family="sd1"):
    c = build_tiny_components(family, seed=0)  # the weights tiny_model_dir(family) writes
    tes = [c["text_encoder"]] + ([c["text_encoder_2"]] if family == "sdxl" else [])
    return SimpleNamespace(unet=c["unet"], text_encoders=tes, family=family, v_prediction=False)


def trained_network(base, path, seed=0, **values):
    """A network of the repo's own builder, applied to `base`, with random (as if trained) weights, saved at
    fp32."""
    cfg = parse_config("lora", {**REQUIRED, "network_dim": 4, "network_alpha": 2, **values})
    net = build_network(base, cfg)
    net.apply_to()  # as the trainer does first (LyCORIS' full module saves its diff only when applied)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    net.save_weights(path, "float", {"ss_output_name": path.stem, "ss_tag_frequency": '{"1_dog": {"dog": 3}}'})
    return net


def layer_input(layer, g):
    if isinstance(layer, nn.Conv2d):
        return torch.randn(1, layer.in_channels, 8, 8, generator=g)
    return torch.randn(2, layer.in_features, generator=g)


def assert_merged_layers_run_like_the_network(net, merged, weight):
    """Each layer the (applied) network wraps: base layer + network at `weight` ≈ merged layer, and it
    changed."""
    layers = {t.lora_name: t.module for t in all_targets(merged.unet, merged.text_encoders, merged.family, True)}
    net.set_multiplier(weight)
    g = torch.Generator().manual_seed(0)
    changed = 0
    with torch.no_grad():
        for m in net.loras:
            layer = m.org_module[0]
            x = layer_input(layer, g)
            with_net, baked = layer(x), layers[m.lora_name](x)
            torch.testing.assert_close(baked, with_net, atol=2e-5, rtol=1e-4, msg=m.lora_name)
            net.set_multiplier(0.0)
            changed += bool((layer(x) - with_net).abs().max() > 1e-4)
            net.set_multiplier(weight)
    assert changed > len(net.loras) // 2, "the file changed most of its layers"


CASES = {
    "loha": {"LoRA_type": "LyCORIS/LoHa", "conv_dim": 2, "conv_alpha": 1},
    "lokr": {"LoRA_type": "LyCORIS/LoKr", "conv_dim": 2, "conv_alpha": 1, "factor": 4},
    "dora": {"LoRA_type": "LyCORIS/LoCon", "conv_dim": 2, "conv_alpha": 1, "dora_wd": True},
    "full": {"LoRA_type": "LyCORIS/Native Fine-Tuning"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_lycoris_bakes_the_network_as_it_runs(case, tiny_model_dir, tmp_path):
    base = tiny_base()
    lyco = tmp_path / f"{case}.safetensors"
    net = trained_network(base, lyco, **CASES[case])
    out = tmp_path / "merged.safetensors"
    report = merge_lycoris(tiny_model_dir("sd1"), lyco, out, weight=0.7, show_progress=False)
    assert report.details["family"] == "sd1" and report.details["layers_changed"] == len(net.loras)
    assert "loaded back" in report.text
    assert_merged_layers_run_like_the_network(net, load_base_model(out), 0.7)


def test_merge_lycoris_into_sdxl_written_as_a_diffusers_folder(tiny_model_dir, tmp_path):
    base = tiny_base("sdxl")
    lyco = tmp_path / "xl-lokr.safetensors"
    net = trained_network(base, lyco, LoRA_type="LyCORIS/LoKr", conv_dim=2, factor=4)
    out = tmp_path / "xl-merged"
    report = merge_lycoris(tiny_model_dir("sdxl"), lyco, out, weight=1.0, is_sdxl=True, show_progress=False)
    assert (out / "model_index.json").is_file() and report.details["adapters"] == {"LoKr": len(net.loras)}
    assert_merged_layers_run_like_the_network(net, load_base_model(out), 1.0)


def test_merge_lycoris_refuses_a_plain_lora_another_family_and_an_existing_output(tiny_model_dir, tmp_path):
    sd1 = tiny_base()
    plain = tmp_path / "plain.safetensors"
    trained_network(sd1, plain, LoRA_type="Standard")
    with pytest.raises(ToolError, match=r"plain\.safetensors is a plain kohya LoRA.*lora merge --sd_model"):
        merge_lycoris(tiny_model_dir("sd1"), plain, tmp_path / "m.safetensors", show_progress=False)

    xl = tmp_path / "xl-loha.safetensors"
    trained_network(tiny_base("sdxl"), xl, LoRA_type="LyCORIS/LoHa")
    with pytest.raises(ValueError, match=r"xl-loha\.safetensors does not fit this sd1 base model"):
        merge_lycoris(tiny_model_dir("sd1"), xl, tmp_path / "m.safetensors", show_progress=False)
    assert not (tmp_path / "m.safetensors").exists()

    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    proc = trainer_cli("lora", "merge-lycoris", str(tiny_model_dir("sd1")), str(xl), str(out), "--weight", "0.5",
                       timeout=300)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_bytes() == b"keep me"


# --- Extract DyLoRA ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dylora(tmp_path_factory):
    path = tmp_path_factory.mktemp("dylora") / "dy.safetensors"
    trained_network(tiny_base(), path, LoRA_type="Kohya DyLoRA", network_dim=8, network_alpha=4, conv_dim=8,
                    conv_alpha=4, unit=2)
    return path


def test_extract_dylora_keeps_the_first_ranks_and_alpha(dylora, tmp_path):
    source, meta = read_modules(dylora)
    assert meta["ss_network_module"] == "networks.dylora"
    out = tmp_path / "dy4.safetensors"
    report = extract_dylora(dylora, out, new_rank=4, show_progress=False)
    cut, new_meta = read_modules(out)
    assert set(cut) == set(source) and report.details["ranks"] == [4]
    for name, m in source.items():
        want = (m.alpha / 4) * (m.up[:, :4].flatten(1) @ m.down[:4].flatten(1))
        assert cut[name].rank == 4 and cut[name].alpha == m.alpha
        torch.testing.assert_close(cut[name].delta().flatten(1), want, atol=1e-6, rtol=1e-5)
    assert new_meta["ss_network_module"] == "networks.lora" and new_meta["ss_network_dim"] == "4"
    assert new_meta["ss_network_alpha"] == "4" and "unit" not in json.loads(new_meta["ss_network_args"])
    assert "split from DyLoRA, rank 8 to 4" in new_meta["ss_training_comment"]
    assert new_meta["ss_tag_frequency"] == meta["ss_tag_frequency"]
    assert verify_lora_file(out, tiny_base()).ok


def test_extract_dylora_without_new_rank_writes_every_rank_as_sd_scripts(dylora, tmp_path):
    report = extract_dylora(dylora, tmp_path / "dy.safetensors", show_progress=False)
    assert report.details["ranks"] == [2, 4, 6]
    for r in (2, 4, 6):
        modules, meta = read_modules(tmp_path / f"dy-{r:04d}.safetensors")
        assert {m.rank for m in modules.values()} == {r} and meta["ss_network_dim"] == str(r)


def test_extract_dylora_refuses_bad_ranks_and_other_files(dylora, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(ToolError, match="--new_rank 3 must be a positive multiple of the DyLoRA unit 2"):
        extract_dylora(dylora, out, new_rank=3, show_progress=False)
    with pytest.raises(ToolError, match="--new_rank 10 is above dy.safetensors's rank 8"):
        extract_dylora(dylora, out, new_rank=10, show_progress=False)
    with pytest.raises(ToolError, match="--unit 3 is not a multiple of the file's DyLoRA unit 2"):
        extract_dylora(dylora, out, unit=3, new_rank=3, show_progress=False)
    plain = tmp_path / "plain.safetensors"
    trained_network(tiny_base(), plain, LoRA_type="Standard")
    proc = trainer_cli("lora", "extract-dylora", "--model", str(plain), "--save_to", str(out), "--new_rank", "2",
                       timeout=300)
    assert proc.returncode == 2 and "not a DyLoRA file" in proc.stderr and "resize" in proc.stderr
    assert not out.exists()
