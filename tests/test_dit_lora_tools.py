"""merge (LoRA → checkpoint) and extract (checkpoints → LoRA) for FLUX.1, Chroma and SD3.5 on tiny models in
their real file layouts: every merged layer equals base + ΔW computed here from the LoRA's up/down/alpha and
the family's key map (fused qkv / linear1 split into diffusers' q/k/v[/mlp] rows), the merged file loads with
the repo's loader, an extract at full rank gives back a known ΔW and passes Verify LoRA, and LoRAs for
another model or parts the file lacks are refused with a message naming the file."""
from __future__ import annotations

import pytest
import torch

from trainer.models.loader import load_base_model
from trainer.models.tiny_chroma import write_tiny_chroma
from trainer.models.tiny_dit import write_tiny_flux, write_tiny_sd3
from trainer.networks import create_network
from trainer.networks.checks import build_name_map, verify_lora_file
from trainer.networks.files import LoRAFileError, read_lora_file
from trainer.networks.fused_lora import LinearGroup
from trainer.networks.naming import all_targets
from trainer.tools.extract import extract_lora
from trainer.tools.merge import merge_into_model
from trainer.tools.output import ToolError

QUIET = {"show_progress": False}
TE_FILES = ("clip_l", "clip_g", "t5xxl")


def load(files, model=None):
    return load_base_model(model or files["model"], vae=files.get("ae"),
                           text_encoder_files={k: files[k] for k in TE_FILES if k in files})


def random_lora(base, path, train_text_encoder=False, seed=1, metadata=None):
    """A LoRA with random (as if trained) up and down matrices, saved at full precision."""
    net = create_network(base, network_dim=4, network_alpha=2, train_text_encoder=train_text_encoder)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
            m.lora_down.weight.copy_(torch.randn(m.lora_down.weight.shape, generator=g) * 0.2)
    net.save_weights(path, "float", metadata or {})
    return path


def lora_deltas(path) -> dict[str, torch.Tensor]:
    """ΔW = alpha / rank · up @ down per module, straight from the file's tensors."""
    state, _ = read_lora_file(path)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    out = {}
    for n in names:
        up, down = state[f"{n}.lora_up.weight"].double(), state[f"{n}.lora_down.weight"].double()
        out[n] = float(state[f"{n}.alpha"]) / down.shape[0] * (up @ down)
    return out


def expected_weights(base, deltas, ratio=1.0) -> dict[int, torch.Tensor]:
    """Each diffusers weight the LoRA changes (keyed by the module's id in `base`): the base weight plus its rows
    of ΔW (a fused original layer feeds several diffusers Linears, SD3's last modulation with swapped halves)."""
    name_map = build_name_map(all_targets(base.unet, base.text_encoders, base.family), base.family)
    out = {}
    for name, delta in deltas.items():
        module = name_map[name].module
        parts = zip(module.members, module.rows) if isinstance(module, LinearGroup) else [(module, None)]
        for member, rows in parts:
            d = delta if rows is None else delta[rows]
            out[id(member)] = (member.weight.double() + ratio * d, member)
    return out


def assert_merged(merged, base, deltas, ratio=1.0, atol=1e-5):
    """Every parameter of the merged model: base + ΔW where the LoRA has a module, unchanged elsewhere."""
    want = expected_weights(base, deltas, ratio)
    by_id = {id(w[1].weight): w[0] for w in want.values()}
    changed = 0
    for (name, p_base), (_, p_merged) in zip(_params(base), _params(merged)):
        target = by_id.get(id(p_base))
        if target is None:
            assert torch.equal(p_base, p_merged), f"{name} changed but the LoRA has no module for it"
        else:
            torch.testing.assert_close(p_merged.double(), target, atol=atol, rtol=0, msg=name)
            changed += 1
    assert changed == len(want) > 0


def _params(base):
    for part, module in [("unet", base.unet)] + [(f"te{i}", te) for i, te in enumerate(base.text_encoders)]:
        for name, p in module.named_parameters():
            yield f"{part}.{name}", p


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    files = write_tiny_flux(tmp_path_factory.mktemp("flux") / "kohya", layout="kohya")
    base = load(files)
    lora = random_lora(base, files["model"].parent / "flux_lora.safetensors")
    return files, base, lora


def test_a_flux_lora_merges_into_the_bfl_single_file_layer_by_layer(flux, tmp_path):
    files, base, lora = flux
    out = tmp_path / "merged.safetensors"
    report = merge_into_model(files["model"], [lora], out, ratios=[0.7], save_precision="float", **QUIET)
    assert report.details == {"layers_changed": 26, "family": "flux"}
    names = lora_deltas(lora)
    assert "lora_unet_double_blocks_0_img_attn_qkv" in names and "lora_unet_single_blocks_0_linear1" in names
    merged = load(files, out)  # the repo's loader reads it back (with kohya's separate clip_l / t5xxl / ae)
    assert merged.family == "flux" and merged.extra["variant"] == "dev"
    assert_merged(merged, base, names, ratio=0.7)
    # the same as the studio's own LoRA merge on the diffusers model (fused LoRA modules)
    from trainer.networks import create_network_from_weights

    ref = load(files)
    create_network_from_weights(lora, ref, multiplier=0.7).merge_to()
    for (n, a), (_, b) in zip(ref.unet.named_parameters(), merged.unet.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=n)


def test_the_merged_file_keeps_the_bfl_keys_and_the_save_precision(flux, tmp_path):
    from safetensors import safe_open

    files, _, lora = flux
    out = tmp_path / "merged-bf16.safetensors"
    merge_into_model(files["model"], [lora], out, save_precision="bf16", **QUIET)
    with safe_open(files["model"], "pt") as a, safe_open(out, "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert {b.get_tensor(k).dtype for k in b.keys()} == {torch.bfloat16}
        assert b.metadata()["modelspec.architecture"] == "flux-1-dev"
    merged = load(files, out)
    assert merged.unet.dtype == torch.float32  # loaded back through the repo's loader


def test_a_lora_with_text_encoders_merges_into_a_bundled_flux_file(tmp_path):
    files = write_tiny_flux(tmp_path / "bundled", layout="bundled")
    base = load(files)
    lora = random_lora(base, tmp_path / "with_te.safetensors", train_text_encoder=True, seed=2)
    names = lora_deltas(lora)
    assert any(n.startswith("lora_te1_") for n in names) and any(n.startswith("lora_te3_") for n in names)
    out = tmp_path / "merged.safetensors"
    merge_into_model(files["model"], [lora], out, save_precision="float", **QUIET)
    assert_merged(load(files, out), base, names)


def test_text_encoder_modules_are_refused_when_the_file_has_no_text_encoder(flux, tmp_path):
    files, base, _ = flux
    lora = random_lora(base, tmp_path / "with_te.safetensors", train_text_encoder=True)
    with pytest.raises(ToolError, match="CLIP-L.*holds no CLIP-L weights"):
        merge_into_model(files["model"], [lora], tmp_path / "m.safetensors", **QUIET)
    assert not (tmp_path / "m.safetensors").exists()


def test_a_lora_for_another_model_is_refused(flux, tmp_path):
    from trainer.models.tiny import build_tiny_components

    files, base, lora = flux
    sdxl = build_tiny_components("sdxl", seed=0)
    sdxl["family"] = "sdxl"
    sdxl_lora = random_lora(sdxl, tmp_path / "sdxl.safetensors")
    with pytest.raises((ToolError, LoRAFileError), match="sdxl"):
        merge_into_model(files["model"], [sdxl_lora], tmp_path / "a.safetensors", **QUIET)
    # a FLUX.1 LoRA into an SD3.5 file and into an SD1 checkpoint
    sd3 = write_tiny_sd3(tmp_path / "sd3", layout="kohya")
    with pytest.raises(ToolError, match="flux.*SD3.5"):
        merge_into_model(sd3["model"], [lora], tmp_path / "b.safetensors", **QUIET)
    from trainer.models.saving import save_single_file

    sd1 = build_tiny_components("sd1", seed=0)
    save_single_file(sd1, tmp_path / "sd1.safetensors", family="sd1")
    with pytest.raises((ToolError, LoRAFileError), match="flux"):
        merge_into_model(tmp_path / "sd1.safetensors", [lora], tmp_path / "c.safetensors", **QUIET)
    assert not any((tmp_path / n).exists() for n in ("a.safetensors", "b.safetensors", "c.safetensors"))


def test_dit_merge_output_must_be_a_new_safetensors_file(flux, tmp_path):
    files, _, lora = flux
    with pytest.raises(ToolError, match="FLUX.1 model is written as one .safetensors file"):
        merge_into_model(files["model"], [lora], tmp_path / "folder", **QUIET)
    with pytest.raises(ToolError, match=".safetensors"):
        merge_into_model(files["model"], [lora], tmp_path / "m.ckpt", **QUIET)
    (tmp_path / "m.safetensors").write_bytes(b"keep")
    with pytest.raises(ToolError, match="--overwrite"):
        merge_into_model(files["model"], [lora], tmp_path / "m.safetensors", **QUIET)
    assert (tmp_path / "m.safetensors").read_bytes() == b"keep"


def test_the_cli_merges_a_flux_lora_and_refuses_with_exit_2(flux, tmp_path):
    from test_train_support import trainer_cli

    files, _, lora = flux
    ok = trainer_cli("lora", "merge", "--sd_model", str(files["model"]), "--models", str(lora), "--save_to",
                     str(tmp_path / "m.safetensors"), "--save_precision", "bf16")
    assert ok.returncode == 0, ok.stderr
    again = trainer_cli("lora", "merge", "--sd_model", str(files["model"]), "--models", str(lora), "--save_to",
                        str(tmp_path / "m.safetensors"))
    assert again.returncode == 2 and "--overwrite" in again.stderr + again.stdout


def test_extract_from_a_flux_fine_tune_at_full_rank_gives_back_the_difference(flux, tmp_path):
    files, base, lora = flux
    tuned = tmp_path / "tuned.safetensors"
    merge_into_model(files["model"], [lora], tuned, save_precision="float", **QUIET)
    # the base as a diffusers folder: both layouts are read as the original BFL tensors
    org = write_tiny_flux(tmp_path / "org", layout="diffusers")["model"]
    out = tmp_path / "extracted.safetensors"
    report = extract_lora(org, tuned, out, dim=64, clamp_quantile=1.0, save_precision="float", **QUIET)
    assert report.details["fro_kept"] == pytest.approx(1.0) and report.details["modules"] == 26
    want, got = lora_deltas(lora), lora_deltas(out)
    assert set(got) == set(want)  # kohya's fused names: lora_unet_double_blocks_0_img_attn_qkv …
    for name, delta in want.items():
        torch.testing.assert_close(got[name], delta, atol=2e-5, rtol=0, msg=name)
    state, meta = read_lora_file(out)
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_network_module"] == "networks.lora_flux"
    assert state["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape[0] == 3 * 16
    assert verify_lora_file(out, base).ok


def test_extract_refuses_models_of_different_families(flux, tmp_path):
    files, _, _ = flux
    sd3 = write_tiny_sd3(tmp_path / "sd3", layout="kohya")
    with pytest.raises(ToolError, match="FLUX.1.*SD3.5"):
        extract_lora(files["model"], sd3["model"], tmp_path / "x.safetensors", **QUIET)


def test_an_sd3_lora_merges_into_the_sai_single_file(tmp_path):
    files = write_tiny_sd3(tmp_path / "sd3", layout="kohya")
    base = load(files)
    lora = random_lora(base, tmp_path / "sd3_lora.safetensors")
    names = lora_deltas(lora)
    assert any(n.endswith("x_block_attn_qkv") for n in names)
    out = tmp_path / "merged.safetensors"
    merge_into_model(files["model"], [lora], out, ratios=[-0.5], save_precision="float", **QUIET)
    merged = load(files, out)  # MMDiT + VAE in SAI's layout, text encoders from their files
    assert merged.family == "sd3"
    assert_merged(merged, base, names, ratio=-0.5)
    for (n, a), (_, b) in zip(base.vae.named_parameters(), merged.vae.named_parameters()):
        assert torch.equal(a, b), n
    extracted = tmp_path / "extracted.safetensors"
    extract_lora(files["model"], out, extracted, dim=64, clamp_quantile=1.0, save_precision="float", **QUIET)
    assert verify_lora_file(extracted, base).ok
    for name, delta in lora_deltas(extracted).items():
        torch.testing.assert_close(delta, -0.5 * names[name], atol=2e-5, rtol=0, msg=name)


def test_a_chroma_lora_merges_into_the_chroma_file(tmp_path):
    files = write_tiny_chroma(tmp_path / "chroma", layout="kohya")
    base = load(files)
    lora = random_lora(base, tmp_path / "chroma_lora.safetensors", metadata={"ss_base_model_version": "chroma"})
    out = tmp_path / "merged.safetensors"
    merge_into_model(files["model"], [lora], out, save_precision="float", **QUIET)
    assert_merged(load(files, out), base, lora_deltas(lora))
    flux_files = write_tiny_flux(tmp_path / "flux", layout="kohya")
    with pytest.raises(ToolError, match="chroma.*FLUX.1"):
        merge_into_model(flux_files["model"], [lora], tmp_path / "x.safetensors", **QUIET)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_merging_into_a_diffusers_folder_writes_the_same_file_as_into_the_single_file(family, tmp_path):
    from safetensors import safe_open

    write = write_tiny_flux if family == "flux" else write_tiny_sd3
    files, folder = write(tmp_path / "kohya", layout="kohya"), write(tmp_path / "folder", layout="diffusers")["model"]
    lora = random_lora(load(files), tmp_path / "lora.safetensors")
    a, b = tmp_path / "from_file.safetensors", tmp_path / "from_folder.safetensors"
    merge_into_model(files["model"], [lora], a, save_precision="float", **QUIET)
    merge_into_model(folder, [lora], b, save_precision="float", **QUIET)
    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        for k in fa.keys():
            torch.testing.assert_close(fa.get_tensor(k), fb.get_tensor(k), atol=1e-6, rtol=0, msg=k)
