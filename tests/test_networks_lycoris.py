"""A kohya_ss user picks a LyCORIS type (LoHa, LoKr, DoRA, iA3), trains it with the real trainer on the
tiny SD1 model, and the file loads where they use it:

* `python -m trainer verify` accepts it;
* AUTOMATIC1111 / ComfyUI: every module name is one their key maps find (the lookups re-implemented in
  test_networks_clients.py), its tensors form an adapter they know, and the weight change their loaders
  compute (the formulas re-implemented here from their network_*.py / weight_adapter code) is the one
  LyCORIS computes;
* LyCORIS' own loader (`lycoris.kohya.create_network_from_weights`, what sd-scripts and kohya_ss use)
  rebuilds every module, and the U-Net it merges into gives the same output as the client formulas.
"""
from __future__ import annotations

import logging
import re

import pytest
import torch
from safetensors import safe_open
from test_networks_clients import _TE_MODULE, a1111_compvis_name, original_unet_layers
from test_train_support import lora_config, make_dataset, run_trainer, write_config
from torch import nn

from trainer.__main__ import main as trainer_main
from trainer.models import load_base_model
from trainer.networks.naming import split_key

CASES = {
    "loha": {"LoRA_type": "LyCORIS/LoHa", "conv_dim": 2, "conv_alpha": 1},
    "lokr": {"LoRA_type": "LyCORIS/LoKr", "conv_dim": 2, "conv_alpha": 1, "factor": 4},
    "dora": {"LoRA_type": "LyCORIS/LoCon", "conv_dim": 2, "conv_alpha": 1, "dora_wd": True},
    "ia3": {"LoRA_type": "LyCORIS/iA3", "learning_rate": 1e-2},
}
ADAPTER_KEYS = {"loha": "hada_w1_a", "lokr": "lokr_w1", "dora": "dora_scale", "ia3": "on_input"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """Train each case for two steps through `python -m trainer run` (one run per case)."""
    root = tmp_path_factory.mktemp("lycoris")
    model = tiny_model_dir("sd1")
    data = make_dataset(root / "data", images=2)
    files = {}
    for name, overrides in CASES.items():
        cfg = lora_config(model, data, root / name, epoch=1, save_every_n_epochs=0, output_name=name,
                          **{"learning_rate": 5e-3, **overrides})
        rc, events, err = run_trainer(write_config(cfg, root / f"{name}.json"))
        assert rc == 0, err[-3000:]
        saved = [e for e in events if e["type"] == "saved"]
        assert saved and all(e["verified"] for e in saved), saved
        files[name] = root / name / f"{name}.safetensors"
    return model, files


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def modules_of(state):
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, suffix = split_key(key)
        out.setdefault(name, {})[suffix] = value
    return out


# --- the clients' weight formulas (A1111 extensions-builtin/Lora/network_*.py, ComfyUI weight_adapter) ---

def client_delta(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """ΔW as A1111 and ComfyUI compute it from a module's tensors, for a layer weight `weight`."""
    t = {k: v.float() for k, v in t.items()}
    shape, w = weight.shape, weight.float()
    if "hada_w1_a" in t:
        rank = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    elif "lokr_w1" in t or "lokr_w1_a" in t:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        # alpha/rank only when a factor is decomposed (A1111/ComfyUI), else scale 1
        rank = next((t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t), None)
        # ComfyUI: a 4-D w2 gets a 4-D w1; a 2-D product is reshaped to the layer afterwards
        delta = torch.kron(w1 if w2.dim() == 2 else w1[:, :, None, None], w2)
    elif "weight" in t and "on_input" in t:  # iA3 scales the layer's outputs (or inputs)
        scale = t["weight"].reshape(-1)
        if bool(t["on_input"]):
            return w * scale.reshape(1, -1, *[1] * (w.dim() - 2))
        return w * scale.reshape(-1, *[1] * (w.dim() - 1))
    else:
        rank = t["lora_down.weight"].shape[0]
        delta = t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1)
    delta = delta.reshape(shape)
    if "alpha" in t and rank:
        delta = delta * (float(t["alpha"]) / rank)
    if "dora_scale" in t:  # ComfyUI picks the norm's axis from dora_scale's shape
        merged, ds = w + delta, t["dora_scale"]
        if ds.shape[0] == w.shape[0]:
            norm = merged.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        else:
            norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (w.dim() - 2))
        return merged * (ds / norm) - w
    return delta


def layer_of(base, name):
    """The base layer a kohya module name means (SD1 names are diffusers paths)."""
    root, prefix = (base.unet, "lora_unet_") if name.startswith("lora_unet_") else (base.text_encoders[0], "lora_te_")
    paths = {p.replace(".", "_"): m for p, m in root.named_modules()}
    key = name[len(prefix):]
    return paths.get(key) or paths[key[len("text_model_"):]]


@pytest.mark.parametrize("case", list(CASES))
def test_trained_lycoris_file_loads_in_a1111_comfyui_lycoris_and_verify(case, trained, capsys):
    model, files = trained
    path = files[case]
    state, meta = read(path)

    # kohya's metadata: lycoris.kohya with the algo in ss_network_args
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = __import__("json").loads(meta["ss_network_args"])
    assert args["algo"] == {"loha": "loha", "lokr": "lokr", "dora": "locon", "ia3": "ia3"}[case]
    assert (args.get("dora_wd") == "True") == (case == "dora")

    # python -m trainer verify
    assert trainer_main(["verify", str(path), "--base", str(model), "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["ok"] and report["modules"] == len(modules_of(state))

    # A1111 / ComfyUI key maps: every module is found, with an adapter's tensors
    base = load_base_model(model)
    layers = original_unet_layers(base.unet)
    mods = modules_of(state)
    assert any(ADAPTER_KEYS[case] in t for t in mods.values())
    for name, tensors in mods.items():
        if name.startswith("lora_unet_"):
            compvis = a1111_compvis_name(name)
            assert compvis is not None and compvis[len("diffusion_model_"):] in layers, name
        else:
            assert re.fullmatch(r"lora_te_" + _TE_MODULE, name), name

    # the clients' ΔW == LyCORIS' ΔW, module by module, from LyCORIS' own loader
    from lycoris.kohya import create_network_from_weights

    te_holder = nn.Module()
    te_holder.text_model = base.text_encoders[0]  # transformers < 5 layout, the one kohya's names come from
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    if case == "ia3":
        # lycoris-lora 4.1.3's loader raises TypeError on every iA3 file (its make_module_from_state_dict takes
        # one tensor, extract_state_dict gives two); the module it means to build is checked instead
        from trainer.networks.lycoris_checks import make_ia3

        rebuilt = {n: make_ia3(n, layer_of(base, n), t) for n, t in mods.items()}
    else:
        from lycoris.kohya import LycorisNetworkKohya

        # its throw-away network at start would target diffusers' TimestepEmbedding both by class and by
        # name (duplicate-name assertion in lycoris-lora 4.1.3); the modules come from the file either way
        names = LycorisNetworkKohya.UNET_TARGET_REPLACE_NAME
        LycorisNetworkKohya.UNET_TARGET_REPLACE_NAME = []
        try:
            net, _ = create_network_from_weights(1.0, str(path), None, te_holder, base.unet)
        finally:
            LycorisNetworkKohya.UNET_TARGET_REPLACE_NAME = names
        rebuilt = {m.lora_name: m for m in net.unet_loras + net.text_encoder_loras}
    assert set(rebuilt) == set(mods), "LyCORIS' loader rebuilt every module of the file"
    changed = 0
    g = torch.Generator().manual_seed(0)
    for name, tensors in mods.items():
        layer = layer_of(base, name)
        conv = isinstance(layer, nn.Conv2d)
        x = torch.randn((1, layer.in_channels, 8, 8) if conv else (2, layer.in_features), generator=g)
        with torch.no_grad():
            before = layer(x)
            rebuilt[name].apply_to()
            try:
                ours = layer(x) - before  # what LyCORIS adds when it runs the file
            finally:
                rebuilt[name].restore()
            theirs_w = client_delta(tensors, layer.weight)
            theirs = (nn.functional.conv2d(x, theirs_w, None, layer.stride, layer.padding) if conv
                      else nn.functional.linear(x, theirs_w))
        # fp32 files, fp32 kernels: only summation order differs
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4, msg=name)
        changed += bool(theirs.abs().max() > 0)
    assert changed > len(mods) // 2, "training changed most modules"


def test_verify_names_the_lycoris_type_and_a_plain_lora_network_refuses_it(trained, tmp_path):
    from trainer.networks import LoRAFileError, create_network, verify_lora_file

    model, files = trained
    base = load_base_model(model)
    report = verify_lora_file(files["loha"], base)
    assert report.ok and set(report.adapters) == {"LoHa"} and "LoHa" in report.to_text()

    net = create_network(base, network_dim=4)
    with pytest.raises(LoRAFileError, match="is a LoHa file.*LoRA_type"):
        net.load_weights(files["loha"])
    with pytest.raises(LoRAFileError, match="DoRA"):
        net.load_weights(files["dora"])

    # a LoHa tensor that does not fit its layer is named
    state, meta = read(files["loha"])
    name = next(k for k in state if k.endswith("hada_w1_a"))
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    from trainer.networks.files import save_lora_file

    bad = tmp_path / "bad.safetensors"
    save_lora_file(bad, state, {k: v for k, v in meta.items() if not k.startswith("sshs")})
    report = verify_lora_file(bad, base)
    assert not report.ok and any(split_key(name)[0] in p and "do not fit" in p for p in report.problems)
