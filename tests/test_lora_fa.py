"""LoRA-FA (kohya_ss LoRA_type "LoRA-FA", sd-scripts networks.lora_fa): the down projection stays at its random
start and only lora_up learns; the file is a plain LoRA that every client and the self-check read."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch
from safetensors import safe_open

from trainer.config import load_config_file, parse_config
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.models.tiny import build_tiny_components
from trainer.networks.registry import build_network


def test_a_lora_fa_network_trains_only_lora_up_and_keeps_lora_down_at_its_start():
    c = build_tiny_components("sd1", seed=0)
    base = SimpleNamespace(unet=c["unet"], text_encoders=[c["text_encoder"]], family="sd1", v_prediction=False)
    cfg = parse_config("lora", {"pretrained_model_name_or_path": "m.safetensors", "train_data_dir": "d",
                                "output_dir": "o", "LoRA_type": "LoRA-FA", "network_dim": 4, "network_alpha": 4,
                                "scale_weight_norms": 1e-3})
    torch.manual_seed(0)
    network = build_network(base, cfg)
    network.apply_to()
    start = {k: v.clone() for k, v in network.state_dict().items()}
    groups = network.prepare_optimizer_params(None, None, 1e-2)
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained and all(id(m.lora_down.weight) not in trained for m in network.loras)
    # the paper's start: normal with std √(2/(in+rank)), not LoRA's kaiming-uniform (std 1/√(3·in))
    big = max(network.loras, key=lambda m: m.lora_down.weight.numel())
    fan_in = big.lora_down.weight.shape[1]
    assert math.isclose(float(big.lora_down.weight.std()), math.sqrt(2 / (fan_in + 4)), rel_tol=0.15)

    opt = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-2, weight_decay=0.1)
    network.train()
    g = torch.Generator().manual_seed(0)
    x, ids = torch.randn(1, 4, 8, 8, generator=g), torch.randint(0, 100, (1, 8), generator=g)
    for _ in range(3):
        loss = base.unet(x, 10, base.text_encoders[0](ids).last_hidden_state).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        network.apply_max_norm_regularization(1e-3)  # scale_weight_norms shrinks ΔW through lora_up only
    after = network.state_dict()
    downs = [k for k in start if k.endswith("lora_down.weight")]
    assert downs and all(torch.equal(start[k], after[k]) for k in downs)
    ups = [k for k in start if k.endswith("lora_up.weight")]
    # all but the mid block's self-attention q/k, which see one token there (softmax of one: no gradient)
    assert sum(not torch.equal(start[k], after[k]) for k in ups) == len(ups) - 2


def test_a_lora_fa_run_saves_plain_lora_files_whose_down_halves_never_moved(tmp_path, tiny_model_dir):
    from test_train_support import lora_config, make_dataset, run_trainer, write_config
    from trainer.models import load_base_model
    from trainer.networks import verify_lora_file

    config = lora_config(tiny_model_dir("sd1"), make_dataset(tmp_path / "data"), tmp_path / "out",
                         LoRA_type="LoRA-FA")
    rc, events, err = run_trainer(write_config(config, tmp_path / "run.json"))
    assert rc == 0, err
    first, last = tmp_path / "out" / "toy-000001.safetensors", tmp_path / "out" / "toy.safetensors"
    with safe_open(str(first), framework="pt") as a, safe_open(str(last), framework="pt") as b:
        assert b.metadata()["ss_network_module"] == "networks.lora_fa"
        keys = list(b.keys())
        assert {k.split(".", 1)[1] for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}
        downs = [k for k in keys if k.endswith("lora_down.weight")]
        ups = [k for k in keys if k.endswith("lora_up.weight")]
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in downs)  # saved as float: bit-exact
        assert sum(not torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in ups) > 0.9 * len(ups)
    report = verify_lora_file(last, load_base_model(tiny_model_dir("sd1")))
    assert report.ok, report.to_text()


def test_a_kohya_ss_lora_fa_json_imports_and_exports_networks_lora_fa(tmp_path):
    data = json.loads(open("tests/data/kohya_lora_v26.json").read())
    path = tmp_path / "lora.json"
    path.write_text(json.dumps({**data, "LoRA_type": "LoRA-FA", "down_lr_weight": "sine"}))
    config = load_config_file(path).config
    assert config.LoRA_type == "LoRA-FA"
    toml = sd_scripts_export(config).toml_data
    assert toml["network_module"] == "networks.lora_fa" and "down_lr_weight=sine" in toml["network_args"]
