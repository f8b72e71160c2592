"""A kohya_ss user picks LoRA_type "Flux1 OFT" (sd-scripts' networks.oft_flux) for a FLUX.1 base:

* an untrained network leaves the model's output as it was (the rotations start at I); by default it rotates the
  double blocks' attention layers, as sd-scripts' oft_flux does;
* a run trains, resumes bit-exactly, and saves kohya's file: ``oft_unet_<BFL name>.oft_blocks.<split>`` (one
  block tensor per part of the fused qkv / linear1) and ``.alpha``, ss_network_module networks.oft_flux;
* sd-scripts' OFT math, written again below from its OFTModule (independent of trainer.networks.oft_flux) and
  applied to the BFL-layout weights, gives the output the trained network gives;
* what oft_flux has no counterpart for, or a family it is not made for, is a clear error at its field.
"""
from __future__ import annotations

import copy

import pytest
import torch
from test_dit_lycoris import base_of, fresh_accelerator_state, train_in_process, transformer_output  # noqa: F401
from test_flux_lora import flux_config, flux_files  # noqa: F401  (flux_files: fixture)
from test_train_support import make_dataset

from trainer.networks.files import read_lora_file

OFT = dict(LoRA_type="Flux1 OFT", network_dim=4)


def sd_scripts_rotated(weight: torch.Tensor, blocks: torch.Tensor, alpha: float) -> torch.Tensor:
    """sd-scripts oft_flux OFTModule (multiplier 1) on one split: Q = B − Bᵀ with its norm clamped to
    alpha·rows, R = (I+Q)(I−Q)⁻¹, W' = einsum("k n m, k n p -> k m p", R, W by blocks)."""
    k, n, _ = blocks.shape
    q = blocks - blocks.transpose(1, 2)
    norm = torch.norm(q.flatten())
    q = q * ((torch.clamp(norm, max=alpha * weight.shape[0]) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(n).unsqueeze(0).repeat(k, 1, 1)
    r = torch.matmul(eye + q, (eye - q).float().inverse())
    return torch.einsum("k n m, k n p -> k m p", r, weight.reshape(k, n, -1)).reshape(weight.shape)


def sd_scripts_splits(name: str, rows: int, hidden: int) -> list[int]:
    """oft_flux's split_dims: double-block qkv in 3, single-block linear1 in 3 + MLP (its 3072 is FLUX's hidden)."""
    if "double" in name and "qkv" in name:
        return [hidden] * 3
    if "single" in name and "linear1" in name:
        return [hidden] * 3 + [rows - 3 * hidden]
    return [rows]


def apply_like_sd_scripts(bfl: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], hidden: int):
    """The BFL transformer weights with every module of the file merged the way oft_flux computes them."""
    out = dict(bfl)
    names = {k.split(".")[0] for k in tensors}
    by_name = {"oft_unet_" + k[:-len(".weight")].replace(".", "_"): k for k in bfl if k.endswith(".weight")}
    for name in names:
        key, alpha = by_name[name], float(tensors[f"{name}.alpha"])
        parts = bfl[key].split(sd_scripts_splits(name, bfl[key].shape[0], hidden))
        out[key] = torch.cat([sd_scripts_rotated(p, tensors[f"{name}.oft_blocks.{i}"].float(), alpha)
                              for i, p in enumerate(parts)])
    return out


def test_an_untrained_flux1_oft_network_leaves_the_output_unchanged_and_rotates_the_attention(
        tmp_path, flux_files):  # noqa: F811
    from trainer.networks.registry import build_network

    base = base_of("flux", flux_files)
    config = flux_config(flux_files, tmp_path, tmp_path / "out", **OFT)
    network = build_network(base, config)
    assert {m.lora_name for m in network.loras} == {f"oft_unet_double_blocks_{i}_{s}_attn_{p}" for i in (0, 1)
                                                    for s in ("img", "txt") for p in ("qkv", "proj")}
    plain = transformer_output("flux", base.unet)
    network.apply_to()
    torch.testing.assert_close(transformer_output("flux", base.unet), plain, atol=1e-6, rtol=0)  # R = I

    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    rotated = transformer_output("flux", base.unet)
    assert not torch.allclose(rotated, plain, atol=1e-4)
    network.merge_to()  # what previews and merge tools use: the same model
    torch.testing.assert_close(transformer_output("flux", base.unet), rotated, atol=1e-5, rtol=1e-4)
    network.unmerge()
    network.restore()
    assert torch.equal(transformer_output("flux", base.unet), plain)

    with pytest.raises(ValueError, match=r"network_dim 3 is the number of OFT blocks .* use one of 1, 2, 4, 8, 16"):
        build_network(base, config.model_copy(update={"network_dim": 3}))


def test_a_flux1_oft_run_resumes_saves_kohyas_file_and_sd_scripts_math_gives_its_output(
        tmp_path, flux_files, fresh_accelerator_state):  # noqa: F811
    from accelerate.state import AcceleratorState

    from trainer.models.flux_keys import bfl_to_diffusers, diffusers_to_bfl, module_map
    from trainer.networks.registry import build_network

    settings = dict(OFT, enable_all_linear=True, network_alpha=0.01, epoch=2, save_state=True)
    data = make_dataset(tmp_path / "images", images=2)
    config = flux_config(flux_files, data, tmp_path / "whole", **settings)
    saved = [e for e in train_in_process(config) if e["type"] == "saved"][-1]
    assert saved["verified"] is True  # the save-time self-check knows the layout
    tensors, meta = read_lora_file(saved["path"])
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == \
        ("networks.oft_flux", "4", "0.01")
    assert meta["ss_network_args"] == '{"enable_all_linear": "True"}' and meta["ss_base_model_version"] == "flux1"

    base = base_of("flux", flux_files)
    cfg = dict(base.unet.config)
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    blocks = [p for p in module_map(cfg) if p.startswith(("double_blocks.", "single_blocks."))]
    assert {k.split(".")[0] for k in tensors} == {"oft_unet_" + p.replace(".", "_") for p in blocks}
    qkv, linear1 = "oft_unet_double_blocks_0_img_attn_qkv", "oft_unet_single_blocks_1_linear1"
    assert sorted(k for k in tensors if k.startswith(qkv + ".")) == [f"{qkv}.alpha"] + [
        f"{qkv}.oft_blocks.{i}" for i in range(3)]
    assert tensors[f"{linear1}.oft_blocks.3"].shape == (4, hidden, hidden)  # the MLP part: 4·hidden rows in 4 blocks

    AcceleratorState._reset_state(True)
    state = tmp_path / "whole" / "toy-000001-state"
    train_in_process(flux_config(flux_files, data, tmp_path / "resumed", resume=str(state), **settings))
    resumed = read_lora_file(tmp_path / "resumed" / "toy.safetensors")[0]
    assert resumed.keys() == tensors.keys() and all(torch.equal(resumed[k], tensors[k]) for k in tensors)

    # sd-scripts' math on the BFL weights gives the trained network's output (its constraint clamped somewhere)
    clamped = [k for k, b in tensors.items() if ".oft_blocks." in k and (b - b.transpose(1, 2)).norm() > 0.01 * hidden]
    assert clamped, "network_alpha 0.01 limits the rotation of some layers"
    plain = transformer_output("flux", base.unet)
    theirs = copy.deepcopy(base.unet)
    patched = apply_like_sd_scripts(diffusers_to_bfl(base.unet.state_dict(), cfg), tensors, hidden)
    theirs.load_state_dict(bfl_to_diffusers(patched, cfg))
    network = build_network(base, config.model_copy(update={"network_weights": saved["path"]}))
    network.apply_to()
    ours = transformer_output("flux", base.unet)
    assert not torch.allclose(ours, plain, atol=1e-5)
    torch.testing.assert_close(transformer_output("flux", theirs), ours, atol=1e-5, rtol=1e-4)


def test_what_oft_flux_lacks_and_families_it_is_not_for_are_refused_at_their_fields(tmp_path, flux_files):  # noqa: F811
    from trainer.config.rules import validate_values

    values = dict(flux_config(flux_files, tmp_path, tmp_path / "out", **OFT).model_dump(), network_dropout=0.1,
                  fp8_base=True, loraplus_lr_ratio=16, train_t5xxl=True)
    fields = {p.field for p in validate_values("lora", values)[1]}
    assert {"network_dropout", "fp8_base", "loraplus_lr_ratio", "train_t5xxl"} <= fields
    values = dict(flux_config(flux_files, tmp_path, tmp_path / "out", **OFT).model_dump(), flux1_checkbox=False,
                  sd3_checkbox=True)
    problem = next(p for p in validate_values("lora", values)[1] if p.field == "LoRA_type")
    assert "networks.oft_flux, made for FLUX.1/Chroma models only" in problem.message
    assert "Flux1 OFT" not in problem.message.split("Choose one of:")[1]
