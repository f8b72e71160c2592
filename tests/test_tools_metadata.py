"""A trained LoRA carries the metadata sd-scripts writes — same keys, same value formats — so
A1111's LoRA card, Civitai and metadata viewers read it; the LoRA tools keep it; and a stale
hash written by another tool is only a warning.

The key list with formats is tests/data/sd_scripts_metadata_keys.txt (from sd-scripts'
train_network.py). One real training run (subprocess, tiny SD1 model) makes the file.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import safetensors.torch
from safetensors import safe_open
from test_train_support import make_dataset, lora_config, run_trainer, write_config

from trainer.models import load_base_model
from trainer.networks import verify_lora_file
from trainer.tools.resize import resize_lora
from trainer.tools.svd_merge import svd_merge_loras

KEYS_FILE = Path(__file__).parent / "data" / "sd_scripts_metadata_keys.txt"
NUM = r"-?\d+(\.\d+)?(e-?\d+)?"
FORMATS = {
    "int": rf"-?\d+", "number": NUM, "bool": r"True|False", "str": r".*",
    "opt_int": r"None|-?\d+", "opt_number": rf"None|{NUM}", "opt_str": r".*",
    "tuple2": r"\(\d+, \d+\)", "wxh": r"\d+x\d+", "hex8": r"[0-9a-f]{8}", "hex64": r"[0-9a-f]{64}",
    "iso_date": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "optimizer": r"[\w.]+\.\w+(\(.+\))?",
}


def sd_scripts_keys() -> dict[str, str]:
    rows = [ln.split() for ln in KEYS_FILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {key: fmt for key, fmt in rows}


def check_format(key: str, fmt: str, value: str) -> None:
    if fmt in FORMATS:
        assert re.fullmatch(FORMATS[fmt], value), f"{key}={value!r} is not {fmt}"
        return
    data = json.loads(value)
    if fmt == "json_dirs":
        assert all(set(v) == {"n_repeats", "img_count"} for v in data.values()), value
    elif fmt == "json_tags":
        assert all(isinstance(n, int) for tags in data.values() for n in tags.values()), value
    elif fmt == "json_buckets":
        assert set(data) == {"buckets", "mean_img_ar_error"} and isinstance(data["mean_img_ar_error"], float)
        for index, bucket in data["buckets"].items():
            assert index.isdigit() and set(bucket) == {"resolution", "count"}, value
            assert len(bucket["resolution"]) == 2 and isinstance(bucket["count"], int)
    elif fmt == "json_args":
        assert isinstance(data, dict) and all(isinstance(v, str) for v in data.values()), value
    else:
        raise AssertionError(f"unknown format {fmt} in {KEYS_FILE.name}")


def read_metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A LoRA (with a LoCon part and a regularization folder) trained for 4 steps."""
    d = tmp_path_factory.mktemp("run")
    data = make_dataset(d / "data", images=2, repeats=2)
    reg = d / "reg" / "1_thing"
    reg.mkdir(parents=True)
    (data / "2_toy" / "toy_00.png").rename(reg / "thing.png")
    config = lora_config(tiny_model_dir("sd1"), data, d / "out", reg_data_dir=str(d / "reg"), epoch=1,
                         save_every_n_epochs=0, optimizer_args="weight_decay=0.02", LoRA_type="Kohya LoCon",
                         conv_dim=2, conv_alpha=1)
    rc, events, err = run_trainer(write_config(config, d / "config.json"))
    assert rc == 0, err[-3000:]
    return d / "out" / "toy.safetensors", tiny_model_dir("sd1")


def test_a_trained_lora_has_every_key_sd_scripts_writes_in_its_format(trained):
    path, model = trained
    meta = read_metadata(path)
    expected = sd_scripts_keys()
    assert len(expected) == 93
    missing = sorted(set(expected) - set(meta))
    assert missing == [], f"keys sd-scripts writes that we do not: {missing}"
    for key, fmt in expected.items():
        check_format(key, fmt, meta[key])
    assert meta["ss_resolution"] == "(64, 64)" and meta["modelspec.resolution"] == "64x64"
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.02)"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_thing": {"n_repeats": 1, "img_count": 1}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_toy": {"n_repeats": 2, "img_count": 1}}
    assert meta["ss_sd_model_name"] == Path(model).name
    from trainer.models.hashing import file_sha256, legacy_file_hash

    assert meta["ss_new_sd_model_hash"] == file_sha256(Path(model))
    assert meta["ss_sd_model_hash"] == legacy_file_hash(Path(model))
    assert meta["ss_fp8_base"] == "False" and meta["ss_huber_schedule"] == "snr"


def a1111_card(metadata: dict[str, str]) -> dict:
    """A1111's Lora card (extensions-builtin/Lora/ui_edit_user_metadata.py), re-implemented: values
    that look like JSON are decoded first (modules/sd_models.read_metadata_from_safetensors), then
    resolutions come from ss_bucket_info, the dataset size from ss_dataset_dirs, tags from
    ss_tag_frequency; the sd-webui-additional-networks card reads ss_resolution as a tuple."""
    meta = {}
    for k, v in metadata.items():
        if isinstance(v, str) and v[:1] == "{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        meta[k] = v
    card = {}
    info = meta.get("ss_bucket_info")
    if info and "buckets" in info:
        resolutions = {}
        for _, bucket in info["buckets"].items():
            reso = bucket["resolution"]
            text = f"{reso[1]}x{reso[0]}"
            resolutions[text] = resolutions.get(text, 0) + int(bucket["count"])
        card["resolutions"] = resolutions
    card["dataset_size"] = sum(int(p.get("img_count", 0)) for p in meta.get("ss_dataset_dirs", {}).values())
    tags = {}
    for _, tag_counts in (meta.get("ss_tag_frequency") or {}).items():
        for tag, count in tag_counts.items():
            tags[tag.strip()] = tags.get(tag.strip(), 0) + int(count)
    card["tags"] = tags
    card["resolution"] = ast.literal_eval(meta["ss_resolution"])
    return card


def test_a1111s_lora_card_reads_our_bucket_info_resolution_and_tags(trained):
    card = a1111_card(read_metadata(trained[0]))
    assert card["resolutions"] == {"64x64": 4}  # 1 image × 2 repeats + the reg image balanced to 2, as sd-scripts
    assert card["dataset_size"] == 1
    assert card["tags"]["toy"] >= 1
    assert card["resolution"] == (64, 64)


def test_resize_and_svd_merge_keep_the_training_metadata(trained, tmp_path):
    path, _ = trained
    before = read_metadata(path)
    resized = resize_lora(path, tmp_path / "r2.safetensors", new_rank=2, show_progress=False).output
    merged = svd_merge_loras([path, resized], tmp_path / "m.safetensors", [0.5, 0.5], new_rank=3,
                             show_progress=False).output
    changed = {"ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_training_comment", "ss_output_name",
               "modelspec.title", "modelspec.date", "modelspec.merged_from", "sshs_model_hash", "sshs_legacy_hash"}
    for out in (resized, merged):
        after = read_metadata(out)
        assert set(sd_scripts_keys()) <= set(after)
        for key, fmt in sd_scripts_keys().items():
            check_format(key, fmt, after[key])
            if key not in changed:
                assert after[key] == before[key], key
        assert json.loads(after["ss_network_args"])["conv_dim"] in ("2", "3")
    assert read_metadata(resized)["ss_network_dim"] == "2" and read_metadata(merged)["ss_network_dim"] == "3"


def test_verify_accepts_a_file_whose_only_fault_is_a_stale_hash(trained, tmp_path):
    """sd-scripts' merge at fp16 keeps the old sshs hash: a warning, not a broken file."""
    path, model = trained
    state = safetensors.torch.load_file(str(path))
    stale = tmp_path / "fp16.safetensors"
    safetensors.torch.save_file({k: v.half() for k, v in state.items()}, str(stale), read_metadata(path))
    report = verify_lora_file(stale, load_base_model(model))
    assert report.ok, report.to_text()
    assert any("sshs_model_hash does not match" in w for w in report.warnings)
