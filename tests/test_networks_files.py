"""LoRA files as kohya writes them: key names, precision, metadata, hashes, loading back, errors."""

import hashlib
import json
import os

import pytest
import safetensors
import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from trainer.models.components import build_text_encoder
from trainer.models.registry import get_architecture
from trainer.models.tiny import build_tiny_components
from trainer.networks import LoRAFileError, create_network, create_network_from_weights, verify_lora_file
from trainer.networks.naming import all_targets


@pytest.fixture(scope="module")
def bases():
    out = {}
    for fam in ("sd1", "sd2", "sdxl"):
        c = build_tiny_components(fam, seed=0)
        c["family"] = fam
        out[fam] = c
    return out


def randomized(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
    return net


def read(path):
    with safetensors.safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def full_size_targets(arch_name, family, te_folders):
    """Targets of a full-size SD1.5 / SDXL model built on the meta device (no memory, no download)."""
    arch = get_architecture(arch_name)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(arch.config("unet"))
        tes = [build_text_encoder(arch.config(f)) for f in te_folders]
    return all_targets(unet, tes, family, include_conv_blocks=True)


def test_sd1_file_has_kohya_keys_with_diffusers_unet_paths(bases, tmp_path):
    net = create_network(bases["sd1"], network_dim=4, conv_dim=2)
    net.save_weights(tmp_path / "a.safetensors")
    sd, _ = read(tmp_path / "a.safetensors")
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert sd[f"{q}.lora_down.weight"].shape[0] == 4 and sd[f"{q}.lora_down.weight"].dim() == 2
    assert sd[f"{q}.alpha"].dim() == 0
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in sd
    assert "lora_te_text_model_encoder_layers_0_mlp_fc2.alpha" in sd
    assert sd["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"].dim() == 4, "SD1 proj_in is a 1×1 conv"
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[1:] == (
        bases["sd1"]["unet"].config.block_out_channels[0], 3, 3)
    for key in sd:  # exactly one dot, before the tensor suffix
        name, suffix = key.split(".", 1)
        assert suffix in ("lora_down.weight", "lora_up.weight", "alpha") and "." not in name


def test_sd2_projections_are_linear(bases, tmp_path):
    create_network(bases["sd2"]).save_weights(tmp_path / "b.safetensors")
    sd, meta = read(tmp_path / "b.safetensors")
    assert sd["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"].dim() == 2
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2"


def test_sdxl_file_uses_sgm_unet_names_and_te1_te2(bases, tmp_path):
    net = create_network(bases["sdxl"], network_dim=4, conv_dim=2)
    net.save_weights(tmp_path / "x.safetensors")
    sd, meta = read(tmp_path / "x.safetensors")
    names = {k.split(".")[0] for k in sd}
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)
    for expected in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
                     "lora_unet_output_blocks_0_1_proj_in", "lora_unet_input_blocks_1_0_in_layers_2",
                     "lora_unet_input_blocks_1_0_emb_layers_1", "lora_unet_input_blocks_4_0_skip_connection",
                     "lora_unet_input_blocks_3_0_op", "lora_unet_output_blocks_2_2_conv",
                     "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                     "lora_te2_text_model_encoder_layers_0_mlp_fc1"):
        assert expected in names, expected
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"


@pytest.mark.parametrize("arch,family,tes,te_count,unet_count", [
    ("sd15", "sd1", ["text_encoder"], 72, 192),
    ("sdxl-base", "sdxl", ["text_encoder", "text_encoder_2"], 264, 722),
])
def test_full_size_models_get_kohyas_module_counts(arch, family, tes, te_count, unet_count):
    """sd-scripts logs 72 TE + 192 U-Net modules for SD1.5 and 264 + 722 for SDXL."""
    targets = full_size_targets(arch, family, tes)
    assert sum(t.part != "unet" for t in targets) == te_count
    assert sum(t.part == "unet" and not t.is_conv_block for t in targets) == unet_count
    names = {t.lora_name for t in targets}
    if family == "sdxl":  # names kohya's own SDXL files carry (see the reference notes)
        assert {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
                "lora_unet_output_blocks_2_2_conv", "lora_unet_input_blocks_3_0_op",
                "lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_2",
                "lora_te2_text_model_encoder_layers_31_mlp_fc2"} <= names
    else:
        assert {"lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
                "lora_te_text_model_encoder_layers_11_mlp_fc2", "lora_unet_up_blocks_0_upsamplers_0_conv"} <= names


def test_save_precision_metadata_and_hashes(bases, tmp_path):
    net = randomized(create_network(bases["sd1"], network_dim=16, network_alpha=8, conv_dim=4, conv_alpha=2))
    trainer_meta = {"ss_output_name": "mylora", "ss_num_epochs": 10, "ss_steps": 1234, "ss_resolution": "(512, 512)",
                    "ss_tag_frequency": {"5_cat": {"cat": 3, "sitting": 1}}, "ss_num_train_images": 50,
                    "ss_training_started_at": 1700000000.5, "ss_sd_model_name": "tiny.safetensors",
                    "modelspec.author": "me"}
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("float", torch.float32)):
        path = tmp_path / f"m-{precision}.safetensors"
        net.save_weights(path, precision, trainer_meta)
        sd, meta = read(path)
        assert {v.dtype for v in sd.values()} == {dtype}
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("16", "8")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert json.loads(meta["ss_tag_frequency"]) == {"5_cat": {"cat": 3, "sitting": 1}}
    assert (meta["ss_num_epochs"], meta["ss_steps"], meta["ss_output_name"]) == ("10", "1234", "mylora")
    assert meta["modelspec.title"] == "mylora" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert all(isinstance(v, str) for v in meta.values())

    # sshs_model_hash: sha256 of the tensor bytes (after the header) — recomputed independently
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header_len:]).hexdigest()
    # sshs_legacy_hash: bytes 0x100000..0x110000 of a re-serialisation with only ss_* metadata
    assert len(data) > 0x110000
    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    again = safetensors.torch.save(sd, ss_only)
    assert meta["sshs_legacy_hash"] == hashlib.sha256(again[0x100000:0x110000]).hexdigest()[:8]


def test_save_is_atomic_and_a_failed_save_keeps_the_previous_file(bases, tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    net = create_network(bases["sd1"])
    net.save_weights(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("trainer.atomic.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        randomized(net).save_weights(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"], "no temp file is left behind"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_continuing_from_a_saved_lora_reproduces_it(bases, tmp_path, family):
    base = bases[family]
    net = randomized(create_network(base, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1))
    path = tmp_path / "l.safetensors"
    net.save_weights(path)

    same = create_network(base, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    result = same.load_weights(path)
    assert not result.missing and not result.ignored and len(result.loaded) == len(net.loras)
    for a, b in zip(net.state_dict().values(), same.state_dict().values()):
        assert torch.equal(a, b)

    with pytest.raises(LoRAFileError, match="dim_from_weights"):
        create_network(base, network_dim=8, conv_dim=2).load_weights(path)


def test_dim_from_weights_rebuilds_per_module_ranks_and_outputs(bases, tmp_path):
    base = bases["sd1"]
    unet = base["unet"]
    net = randomized(create_network(base, network_dim=6, network_alpha=3, conv_dim=2, conv_alpha=1))
    path = tmp_path / "d.safetensors"
    net.save_weights(path)
    x = torch.randn(1, 4, 8, 8)
    ehs = torch.randn(1, 5, unet.config.cross_attention_dim)
    with torch.no_grad():
        net.apply_to()
        expected = unet(x, 5, ehs).sample
        net.restore()
        again = create_network_from_weights(path, base).apply_to()
        actual = unet(x, 5, ehs).sample
        again.restore()
    assert {m.lora_name: m.lora_dim for m in again.loras} == {m.lora_name: m.lora_dim for m in net.loras}
    assert {m.lora_dim for m in again.loras} == {6, 2}
    torch.testing.assert_close(actual, expected)
    assert again.settings["conv_dim"] == 2 and again.settings["network_dim"] == 6


@pytest.mark.parametrize("lora_family,base_family,hint", [
    ("sdxl", "sd1", "sdxl"), ("sd1", "sdxl", "sd1"), ("sd1", "sd2", "sd1"),
])
def test_a_lora_for_another_base_model_is_refused_with_a_clear_message(bases, tmp_path, lora_family, base_family,
                                                                       hint):
    path = tmp_path / f"{lora_family}.safetensors"
    create_network(bases[lora_family]).save_weights(path)
    with pytest.raises(LoRAFileError, match=f"wrong base model.*{hint}.*{base_family}"):
        create_network(bases[base_family]).load_weights(path)
    with pytest.raises(LoRAFileError, match="wrong base model"):
        create_network_from_weights(path, bases[base_family])
    report = verify_lora_file(path, bases[base_family])
    assert not report.ok and "wrong base model" in report.problems[0]


def test_a_truncated_file_is_reported_as_corrupt(bases, tmp_path):
    path = tmp_path / "t.safetensors"
    create_network(bases["sd1"]).save_weights(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LoRAFileError, match="truncated or corrupt"):
        create_network(bases["sd1"]).load_weights(path)
    with pytest.raises(LoRAFileError, match="not found"):
        create_network(bases["sd1"]).load_weights(tmp_path / "missing.safetensors")


def test_verify_accepts_a_good_file_and_flags_stray_keys_shapes_and_missing_alpha(bases, tmp_path):
    base = bases["sd1"]
    good = tmp_path / "good.safetensors"
    randomized(create_network(base, conv_dim=2)).save_weights(good)
    report = verify_lora_file(good, base)
    assert report.ok, report.to_text()
    assert report.modules_by_part["unet"] > 0 and report.modules_by_part["te"] > 0

    sd, meta = read(good)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    fc1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    sd["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(4, 8)
    sd["lora_unet_not_a_layer.lora_up.weight"] = torch.zeros(8, 4)
    sd["bundle_emb.cat.string_to_param.*"] = torch.zeros(1, 8)
    sd[f"{q}.lora_down.weight"] = torch.zeros(4, 3)  # wrong in_features
    del sd[f"{fc1}.alpha"]
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(sd, str(bad), meta)
    report = verify_lora_file(bad, base)
    text = "\n".join(report.problems)
    assert not report.ok
    assert "stray key 'bundle_emb.cat.string_to_param.*'" in text
    assert "lora_unet_not_a_layer: maps to no module" in text
    assert f"{q}: shape mismatch" in text
    assert f"{fc1}: missing .alpha" in text
    assert "sshs_model_hash does not match" in "\n".join(report.warnings)  # a stale hash only warns
    with pytest.raises(LoRAFileError, match="shape mismatch"):
        create_network(base, conv_dim=2).load_weights(bad)


def test_verify_warns_about_untrained_modules_and_rejects_nan(bases, tmp_path):
    base = bases["sd1"]
    path = tmp_path / "zero.safetensors"
    create_network(base).save_weights(path)  # lora_up all zero
    report = verify_lora_file(path, base)
    assert report.ok and len(report.warnings) == 1
    assert report.warnings[0].startswith(f"{report.modules} of {report.modules} modules have an all-zero lora_up")

    sd, meta = read(path)
    key = next(k for k in sd if k.endswith("lora_down.weight"))
    sd[key][0, 0] = float("nan")
    safetensors.torch.save_file(sd, str(path))
    assert any("NaN" in p for p in verify_lora_file(path, base).problems)


def test_a_full_lora_loads_into_a_unet_only_network_and_reports_what_it_skipped(bases, tmp_path):
    path = tmp_path / "full.safetensors"
    full = randomized(create_network(bases["sd1"]))
    full.save_weights(path)
    unet_only = create_network(bases["sd1"], train_text_encoder=False)
    result = unet_only.load_weights(path)
    assert sorted(result.ignored) == sorted(m.lora_name for m in full.text_encoder_loras)
    assert sorted(result.loaded) == sorted(m.lora_name for m in full.unet_loras) and not result.missing


def test_sd1_files_with_the_diffusers_export_prefix_lora_te1_are_accepted(bases, tmp_path):
    """diffusers' `convert_state_dict_to_kohya` writes `lora_te1_` even for SD1; A1111, ComfyUI
    and diffusers all read it as the SD1 text encoder, so we do too."""
    src = tmp_path / "ours.safetensors"
    net = randomized(create_network(bases["sd1"], train_unet=False))
    net.save_weights(src)
    sd, _ = read(src)
    renamed = {k.replace("lora_te_", "lora_te1_", 1): v for k, v in sd.items()}
    path = tmp_path / "exported.safetensors"
    safetensors.torch.save_file(renamed, str(path))
    assert verify_lora_file(path, bases["sd1"]).ok
    again = create_network(bases["sd1"], train_unet=False)
    assert len(again.load_weights(path).loaded) == len(net.loras)
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
