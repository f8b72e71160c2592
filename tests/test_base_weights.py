"""A user trains a LoRA on top of a base that has a style LoRA baked in (sd-scripts' --base_weights /
--base_weights_multiplier), without saving a merged checkpoint first:

* the base the run trains on gives what the base with the LoRA applied gives — a kohya LoRA/LoCon and a
  LyCORIS file, on SD1 and on FLUX.1's fused layers — and what a run on a checkpoint merged with
  `lora merge` starts from: the same first loss;
* the user's LoRA file is only read; one made for another model family stops the run, naming the file;
* a Kohya_ss JSON's additional_parameters bring the options in, and the sd-scripts export writes them back.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_dit_lycoris import transformer_output
from test_flux_lora import base_of as flux_base, flux_files  # noqa: F401  (flux_files: fixture)
from test_train_support import lora_config, make_dataset, run_trainer, write_config

from trainer.models.loader import load_base_model
from trainer.networks import create_lycoris_network, create_network, create_network_from_weights
from trainer.networks.base_weights import merge_base_weights


def saved_random(network, path: Path, seed: int) -> Path:
    """A trained-looking file: every factor random (a new network's lora_up is zero and would change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    network.save_weights(path, torch.float32)
    return path


def sd1_outputs(base):
    g = torch.Generator().manual_seed(0)
    latents, ids = torch.randn(1, 4, 8, 8, generator=g), torch.randint(0, 99, (1, 16), generator=g)
    with torch.no_grad():
        context = base.text_encoders[0](ids)[0]
        return context, base.unet(latents, torch.tensor([500]), context).sample


def assert_same_model(merged, applied, plain):
    """Merged and applied agree to float rounding (measured ≤ 2e-6 of the output's scale); the LoRAs move the
    output by a few % at least, so a merge that left a file or a layer out could not pass."""
    for m, a, p in zip(merged, applied, plain):
        scale = a.abs().max()
        assert (m - a).abs().max() <= 1e-5 * scale
        assert (p - a).abs().max() >= 1e-2 * scale


def test_a_lora_and_a_loha_merged_as_base_weights_give_the_model_applying_them_gives(tmp_path, tiny_model_dir):
    model = tiny_model_dir("sd1")
    base = load_base_model(model)
    locon = saved_random(create_network(base, network_dim=4, network_alpha=2, conv_dim=2),
                         tmp_path / "a.safetensors", 1)
    loha = saved_random(create_lycoris_network(base, "loha", network_dim=4, network_alpha=2),
                        tmp_path / "h.safetensors", 2)

    merged = load_base_model(model)
    lines = merge_base_weights(merged, [(str(locon), 0.7), (str(loha), 1.0)])
    assert "a.safetensors × 0.7" in lines[0] and "LoHa" in lines[1]

    applied = load_base_model(model)
    create_network_from_weights(locon, applied, multiplier=0.7).apply_to()
    lycoris = create_lycoris_network(applied, "loha", network_dim=4, network_alpha=2)
    lycoris.load_weights(loha)
    lycoris.apply_to()
    assert_same_model(sd1_outputs(merged), sd1_outputs(applied), sd1_outputs(load_base_model(model)))


def test_flux_base_weights_merge_into_the_fused_qkv_layers_as_applied(tmp_path, flux_files):
    base = flux_base(flux_files)
    only_transformer = dict(network_dim=4, network_alpha=2, train_text_encoder=False)
    lora = saved_random(create_network(base, **only_transformer), tmp_path / "a.safetensors", 1)
    lokr = saved_random(create_lycoris_network(base, "lokr", factor=4, **only_transformer),
                        tmp_path / "k.safetensors", 2)

    merged = flux_base(flux_files)
    merge_base_weights(merged, [(str(lora), 0.5), (str(lokr), 0.8)])
    applied = flux_base(flux_files)
    create_network_from_weights(lora, applied, multiplier=0.5).apply_to()
    lycoris = create_lycoris_network(applied, "lokr", factor=4, multiplier=0.8, **only_transformer)
    lycoris.load_weights(lokr)
    lycoris.apply_to()
    outputs = [[transformer_output("flux", b.unet)] for b in (merged, applied, flux_base(flux_files))]
    assert_same_model(*outputs)


def first_loss(tmp_path, name, model, data, **values) -> tuple[float, Path]:
    out = tmp_path / name
    config = lora_config(model, data, out, max_train_steps=1, optimizer="SGD", **values)
    rc, events, err = run_trainer(write_config(config, tmp_path / f"{name}.json"))
    assert rc == 0, err[-3000:]
    return [e["loss"] for e in events if e["type"] == "step"][0], out / "toy.safetensors"


def test_a_lora_trained_on_base_weights_starts_where_a_run_on_the_merged_checkpoint_starts(tmp_path, tiny_model_dir):
    from trainer.tools.merge import merge_into_model

    model, data = tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=1)
    style = saved_random(create_network(load_base_model(model), network_dim=4, network_alpha=4),
                         tmp_path / "style.safetensors", 3)
    before = style.read_bytes()

    loss, trained = first_loss(tmp_path, "on_base_weights", model, data, base_weights=str(style),
                               base_weights_multiplier="0.8")
    checkpoint = tmp_path / "merged.safetensors"
    merge_into_model(model, [str(style)], checkpoint, ratios=[0.8], save_precision="float", show_progress=False)
    merged_loss, merged_trained = first_loss(tmp_path, "on_merged", checkpoint, data)

    # the same base weights (merged in fp32 either way), batch, noise and LoRA init: float rounding apart
    assert loss == pytest.approx(merged_loss, rel=1e-5)
    from safetensors.torch import load_file

    # one SGD step moves lora_up by ~1e-4 (Adam's first step would be ±lr wherever the gradient is ~0, noise
    # apart); the two runs' trained files agree to 1e-8. A base_weights merge that moved the seeded stream
    # (another lora_down init) is off by 0.3.
    a, b = load_file(trained), load_file(merged_trained)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert style.read_bytes() == before  # only read


def test_a_lora_for_another_model_family_stops_the_run_naming_the_file(tmp_path, tiny_model_dir):
    from trainer.models.tiny import build_tiny_components

    sdxl_lora = saved_random(create_network(build_tiny_components("sdxl"), family="sdxl", network_dim=4),
                             tmp_path / "sdxl_style.safetensors", 4)
    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data", images=1), tmp_path / "out",
                         base_weights=str(sdxl_lora), max_train_steps=1)
    rc, events, _ = run_trainer(write_config(config, tmp_path / "run.json"))
    failed = [e for e in events if e["type"] == "failed"]
    assert rc == 1 and failed and not any(e["type"] == "step" for e in events)
    assert "base_weights" in failed[0]["message"] and "sdxl_style.safetensors" in failed[0]["message"]
    assert "sdxl" in failed[0]["message"] and not (tmp_path / "out" / "toy.safetensors").exists()


def test_kohya_additional_parameters_bring_base_weights_in_and_the_export_writes_them_back(tmp_path):
    import trainer.config as tc
    from test_config_kohya_import import KOHYA_JSON

    data = json.load(open(KOHYA_JSON))
    data["additional_parameters"] = ("--base_weights \"C:\\loras\\my style.safetensors\" char.safetensors "
                                     "--base_weights_multiplier 0.8 1")
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    c = loaded.config
    assert c.base_weights.splitlines() == ["C:/loras/my style.safetensors", "char.safetensors"]
    assert c.base_weights_multiplier == "0.8, 1"
    assert not any("base_weights" in k for k in loaded.ignored_keys)
    exported = tc.sd_scripts_export(c).toml_data  # train_network.py's nargs lists
    assert exported["base_weights"] == ["C:/loras/my style.safetensors", "char.safetensors"]
    assert exported["base_weights_multiplier"] == [0.8, 1.0]
    # the sd-scripts TOML read back here gives the same options
    again = tc.config_for("lora", base_weights=exported["base_weights"],
                          base_weights_multiplier=exported["base_weights_multiplier"])
    assert (again.base_weights, again.base_weights_multiplier) == (c.base_weights, "0.8, 1")
