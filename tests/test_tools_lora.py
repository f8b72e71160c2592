"""The LoRA tools on the tiny models: each does the math it promises, and its output is a file
every client loads.

A user trains two LoRAs, resizes one, merges them (exactly by stacking ranks, or by SVD to a
chosen rank), merges one into a checkpoint, extracts a LoRA from a fine-tune, and looks at a file.
Tolerances: the tools compute in fp32 with SVD/matmul kernels different from the reference
computation, so comparisons allow float rounding (≈1e-5 relative), never more.
"""
import re

import pytest
import torch

from trainer.models import load_base_model
from trainer.models.saving import save_single_file
from trainer.models.tiny import build_tiny_components
from trainer.networks import create_network, verify_lora_file
from trainer.tools.extract import extract_lora
from trainer.tools.lora_io import read_modules
from trainer.tools.merge import merge_into_model, merge_loras
from trainer.tools.output import ToolError
from trainer.tools.resize import resize_lora
from trainer.tools.show import show_lora
from trainer.tools.svd_merge import svd_merge_loras

from test_networks_clients import (_TE_MODULE, a1111_compvis_name, assert_sd1_names_place_in_a1111,
                                   load_in_diffusers, original_unet_layers)
from test_train_support import trainer_cli


def base(family="sd1"):
    c = build_tiny_components(family, seed=0)
    c["family"] = family
    return c


def trained_lora(path, dim, conv_dim, seed, alpha=None):
    """A LoRA/LoCon with random (as if trained) weights, saved at full precision."""
    net = create_network(base(), network_dim=dim, network_alpha=alpha or dim / 2, conv_dim=conv_dim,
                         conv_alpha=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
            m.lora_down.weight.copy_(torch.randn(m.lora_down.weight.shape, generator=g) * 0.2)
    net.save_weights(path, "float", {"ss_output_name": path.stem, "ss_steps": "100",
                                     "ss_tag_frequency": '{"1_dog": {"dog": 3}}'})
    return path


def deltas(path):
    modules, _ = read_modules(path)
    return {n: m.delta() for n, m in modules.items()}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return {"a": trained_lora(d / "a.safetensors", 8, 4, seed=1), "b": trained_lora(d / "b.safetensors", 4, 2, seed=2)}


@pytest.fixture(scope="module")
def outputs(loras, tmp_path_factory):
    """One output of each LoRA-writing tool, for the client checks."""
    d = tmp_path_factory.mktemp("outputs")
    quiet = {"show_progress": False}
    return {
        "resize": resize_lora(loras["a"], d / "resized.safetensors", new_rank=3, new_conv_rank=2,
                              save_precision="fp16", **quiet).output,
        "svd-merge": svd_merge_loras([loras["a"], loras["b"]], d / "svd.safetensors", [0.7, 0.5], new_rank=6,
                                     new_conv_rank=3, **quiet).output,
        "merge": merge_loras([loras["a"], loras["b"]], d / "merged.safetensors", [1.0, -0.5],
                             save_precision="bf16", **quiet).output,
    }


def test_resize_to_rank_r_is_the_best_rank_r_approximation(loras, tmp_path):
    out = tmp_path / "r3.safetensors"
    report = resize_lora(loras["a"], out, new_rank=3, new_conv_rank=2, save_precision="float", show_progress=False)
    before, (after, meta) = read_modules(loras["a"])[0], read_modules(out)
    assert set(after) == set(before)
    for name, m in before.items():
        d = m.delta()
        mat = d.reshape(d.shape[0], -1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        r = 2 if (m.is_conv and m.down.shape[-1] > 1) else 3
        best = (u[:, :r] * s[:r]) @ vh[:r]  # Eckart–Young: the best rank-r approximation
        assert after[name].rank == r
        assert after[name].scale == pytest.approx(m.scale)  # alpha follows the rank, the scale is kept
        torch.testing.assert_close(after[name].delta().reshape(mat.shape), best, atol=1e-6, rtol=1e-4)
    assert meta["ss_network_dim"] == "3" and meta["ss_network_alpha"] == "1.5"
    assert '"conv_dim": "2"' in meta["ss_network_args"] and meta["ss_output_name"] == "a"
    assert meta["ss_tag_frequency"] == '{"1_dog": {"dog": 3}}' and meta["ss_steps"] == "100"
    assert "resized from rank 8" in meta["ss_training_comment"]
    assert "keep on average" in report.text and str(out) in report.text


def test_dynamic_resize_chooses_each_modules_rank_by_the_kept_frobenius_norm(loras, tmp_path):
    out = tmp_path / "dyn.safetensors"
    report = resize_lora(loras["a"], out, new_rank=6, dynamic_method="sv_fro", dynamic_param=0.9,
                         save_precision="float", show_progress=False)
    before, (after, meta) = read_modules(loras["a"])[0], read_modules(out)
    for name, m in before.items():
        s = torch.linalg.svd(m.delta().reshape(m.up.shape[0], -1))[1]
        kept = torch.sqrt(torch.cumsum(s ** 2, 0) / (s ** 2).sum())
        smallest = int((kept < 0.9).sum()) + 1  # the smallest rank keeping 90 % of the norm
        assert after[name].rank == min(smallest, 6, m.rank), name
        assert report.details["modules"][name]["fro_kept"] >= 0.9 or after[name].rank == min(6, m.rank)
    assert meta["ss_network_dim"] == "Dynamic"


def test_svd_merge_at_the_sum_of_ranks_reproduces_the_sum(loras, tmp_path):
    out = tmp_path / "sum.safetensors"
    svd_merge_loras([loras["a"], loras["b"]], out, [0.7, -1.2], new_rank=12, new_conv_rank=6,
                    save_precision="float", clamp_quantile=1.0, show_progress=False)
    a, b, merged = deltas(loras["a"]), deltas(loras["b"]), deltas(out)
    assert set(merged) == set(a) | set(b)
    for name, d in merged.items():
        torch.testing.assert_close(d, 0.7 * a[name] - 1.2 * b[name], atol=1e-6, rtol=1e-4)
    assert read_modules(out)[1]["ss_network_dim"] == "12"


def test_merging_loras_stacks_ranks_and_is_exact(loras, tmp_path):
    out = tmp_path / "cat.safetensors"
    report = merge_loras([loras["a"], loras["b"]], out, [1.0, 0.25], save_precision="float", show_progress=False)
    a, b, merged = deltas(loras["a"]), deltas(loras["b"]), deltas(out)
    modules = read_modules(out)[0]
    for name, d in merged.items():
        torch.testing.assert_close(d, a[name] + 0.25 * b[name], atol=1e-6, rtol=1e-5)
    assert {m.rank for n, m in modules.items() if not m.is_conv or m.down.shape[-1] == 1} == {12}
    assert "stacking their ranks" in report.text


def test_a_tool_never_replaces_an_existing_file_unless_asked(loras, tmp_path):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"the user's file")
    with pytest.raises(ToolError, match="already exists.*--overwrite"):
        resize_lora(loras["a"], out, new_rank=2, show_progress=False)
    assert out.read_bytes() == b"the user's file"
    resize_lora(loras["a"], out, new_rank=2, overwrite=True, show_progress=False)
    assert read_modules(out)[1]["ss_network_dim"] == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.safetensors"]  # no temp files left


@pytest.mark.parametrize("tool", ["resize", "svd-merge", "merge"])
def test_every_tool_output_passes_verify_and_the_a1111_comfyui_key_maps(outputs, tool):
    c = base()
    report = verify_lora_file(outputs[tool], c)
    assert report.ok, report.to_text()
    layers = original_unet_layers(c["unet"])
    modules, meta = read_modules(outputs[tool])
    assert_sd1_names_place_in_a1111(modules, layers, c["text_encoder"].config.num_hidden_layers)
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"].endswith("/lora")


def test_every_tool_output_loads_in_diffusers_with_every_key(outputs):
    from diffusers import StableDiffusionPipeline

    for tool, path in outputs.items():
        pipe = StableDiffusionPipeline(**build_tiny_components("sd1", seed=0), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        assert load_in_diffusers(pipe, path) == [], tool


@pytest.fixture(scope="module")
def tuned_model(tiny_model_dir, tmp_path_factory):
    """A "fine-tune" of the tiny SD1 model: every LoRA-targetable layer changed."""
    base_path = tiny_model_dir("sd1")
    tuned = load_base_model(base_path)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in (tuned.unet, tuned.text_encoders[0]):
            for p in module.parameters():
                if p.dim() >= 2:
                    p.add_(torch.randn(p.shape, generator=g) * 0.02)
    out = tmp_path_factory.mktemp("tuned") / "tuned.safetensors"
    save_single_file(tuned, out, dtype=torch.float32)
    return base_path, out


def test_extract_at_full_rank_reproduces_the_weight_difference(tuned_model, tmp_path):
    base_path, tuned_path = tuned_model
    out = tmp_path / "extracted.safetensors"
    report = extract_lora(base_path, tuned_path, out, dim=4096, conv_dim=4096, clamp_quantile=1.0,
                          save_precision="float", show_progress=False)
    org, tuned = load_base_model(base_path), load_base_model(tuned_path)
    from trainer.tools.merge import all_targets_of

    want = {t.lora_name: tt.module.weight - t.module.weight
            for t, tt in zip(all_targets_of(org), all_targets_of(tuned))}
    got = deltas(out)
    assert len(got) > 100 and any(m.is_conv for m in read_modules(out)[0].values())
    for name, d in got.items():
        torch.testing.assert_close(d, want[name], atol=2e-6, rtol=1e-5)  # fp32 SVD round-off
    assert report.details["fro_kept"] == pytest.approx(1.0)
    assert verify_lora_file(out, org).ok


def test_extract_at_low_rank_reports_what_it_keeps_and_clients_load_it(tuned_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    base_path, tuned_path = tuned_model
    out = tmp_path / "r2.safetensors"
    report = extract_lora(base_path, tuned_path, out, dim=2, conv_dim=2, show_progress=False)
    assert 0 < report.details["fro_kept"] < 0.9
    assert "of the weight difference" in report.text
    modules, meta = read_modules(out)
    assert meta["ss_network_dim"] == "2" and meta["ss_sd_model_name"] == base_path.name
    assert '"conv_dim": "2"' in meta["ss_network_args"]
    c = base()
    layers = original_unet_layers(c["unet"])
    for name in modules:
        if name.startswith("lora_unet_"):
            assert a1111_compvis_name(name)[len("diffusion_model_"):] in layers, name
        else:
            assert re.fullmatch(r"lora_te_" + _TE_MODULE, name), name
    pipe = StableDiffusionPipeline(**build_tiny_components("sd1", seed=0), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    assert load_in_diffusers(pipe, out) == []


def test_merge_into_an_sdxl_checkpoint_written_as_a_diffusers_folder(tiny_model_dir, tmp_path):
    c = base("sdxl")
    net = create_network(c, network_dim=2, network_alpha=1, conv_dim=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.loras:
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.05)
    lora = tmp_path / "xl.safetensors"
    net.save_weights(lora, "float")
    out = tmp_path / "xl-merged"
    report = merge_into_model(tiny_model_dir("sdxl"), [lora], out, [0.5], save_precision="float",
                              show_progress=False)
    assert (out / "model_index.json").is_file() and report.details["family"] == "sdxl"
    merged = load_base_model(out)
    net.merge_to(0.5)  # our own in-memory merge of the same LoRA into the same weights
    want = dict(c["unet"].named_parameters())
    for name, p in merged.unet.named_parameters():
        torch.testing.assert_close(p, want[name], atol=1e-6, rtol=1e-5)


def test_merge_into_a_checkpoint_equals_diffusers_fuse_lora(tiny_model_dir, loras, tmp_path):
    from diffusers import StableDiffusionPipeline

    base_path = tiny_model_dir("sd1")
    out = tmp_path / "merged-model.safetensors"
    report = merge_into_model(base_path, [loras["b"]], out, [0.8], save_precision="float", show_progress=False)
    ours = load_base_model(out)

    theirs = load_base_model(base_path)
    pipe = StableDiffusionPipeline(**theirs.components(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(loras["b"]))
    pipe.fuse_lora(lora_scale=0.8)
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter layers
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, ours.unet.config.cross_attention_dim, generator=g)
    ids = torch.randint(0, ours.tokenizers[0].vocab_size, (1, 12), generator=g)
    with torch.no_grad():
        before = load_base_model(base_path).unet(x, 20, ehs).sample
        a, b = ours.unet(x, 20, ehs).sample, pipe.unet(x, 20, ehs).sample
        ta, tb = ours.text_encoders[0](ids).last_hidden_state, pipe.text_encoder(ids).last_hidden_state
    assert (a - before).abs().max() > 1e-2  # the LoRA changed the model
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # same merge, other kernels' rounding
    torch.testing.assert_close(ta, tb, atol=1e-5, rtol=1e-4)
    assert "layers changed" in report.text


def test_show_describes_a_file_and_flags_a_stale_hash(loras, tmp_path):
    report = show_lora(loras["a"])
    assert "LoCon for sd1" in report.text and "rank 8" in report.text and "conv rank 4" in report.text
    assert report.details["hashes"]["sshs_model_hash_matches"] is True
    assert report.details["metadata"]["ss_tag_frequency"] == {"1_dog": {"dog": 3}}
    # another tool rewrote the tensors (at fp16) but kept the old hash
    import safetensors.torch
    from safetensors import safe_open

    state = safetensors.torch.load_file(str(loras["a"]))
    with safe_open(str(loras["a"]), "pt") as f:
        meta = f.metadata()
    stale = tmp_path / "stale.safetensors"
    safetensors.torch.save_file({k: v.half() for k, v in state.items()}, str(stale), meta)
    report = show_lora(stale)
    assert report.details["hashes"]["sshs_model_hash_matches"] is False and "stale" in report.text
    assert report.details["dtypes"] == {"float16": len(read_modules(stale)[0])}


def test_convert_a_single_file_to_diffusers_and_back_at_a_chosen_precision(tiny_model_dir, tmp_path):
    from trainer.tools.convert import convert_model

    src = tiny_model_dir("sd2")  # v-prediction: the folder must keep it
    folder = tmp_path / "tiny-sd2-diffusers"
    report = convert_model(src, folder, "fp16")
    assert (folder / "model_index.json").is_file() and "diffusers folder" in report.text
    back = convert_model(folder, tmp_path / "again.safetensors", "float").output
    a, b = load_base_model(src), load_base_model(back)
    assert b.family == "sd2" and b.v_prediction
    for k, v in a.unet.state_dict().items():
        assert torch.equal(v.half().float(), b.unet.state_dict()[k]), k  # fp16 once, exactly
    with pytest.raises(ToolError, match="already exists"):
        convert_model(src, folder, "fp16")


def test_the_cli_takes_kohyas_argument_names():
    from trainer.tools.options import TOOLS, build_parser

    names = {t: {a.dest for a in build_parser(TOOLS[t], "x")._actions} for t in TOOLS}
    assert {"model", "save_to", "new_rank", "new_conv_rank", "dynamic_method", "dynamic_param",
            "save_precision"} <= names["resize"]
    assert {"sd_model", "models", "ratios", "save_to", "concat"} <= names["merge"]
    assert {"models", "ratios", "new_rank", "new_conv_rank", "save_to"} <= names["svd-merge"]
    assert {"model_org", "model_tuned", "save_to", "dim", "conv_dim", "clamp_quantile", "sdxl", "v2"} <= names["extract"]
    args = build_parser(TOOLS["merge"], "x").parse_args(
        ["--models", "a.safetensors", "b.safetensors", "--ratios", "0.7", "0.5", "--save_to", "m.safetensors"])
    assert args.models == ["a.safetensors", "b.safetensors"] and args.ratios == [0.7, 0.5]


def test_the_cli_refuses_to_replace_a_file_and_says_how(loras, tmp_path):
    import subprocess
    import sys

    from test_train_support import ROOT, env

    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    proc = trainer_cli("lora", "resize", "--model", str(loras["a"]), "--save_to", str(out), "--new_rank", "2",
                       timeout=300)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_bytes() == b"keep me"
