"""DreamBooth's "No token padding" (kohya_ss checkbox, sd-scripts train_db.py --no_token_padding): each batch's
captions are padded only to its longest caption, so the U-Net's cross-attention sees that many tokens, not 77."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainer.config import load_config_file, parse_config, validate_values
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.kinds import create_kind
from trainer.models import load_base_model
from trainer.train.setup import build_text

CAPTIONS = ["sks dog", "a photo of sks dog sitting on the beach at sunset"]
CPU = SimpleNamespace(device=torch.device("cpu"))
PRESETS = Path(__file__).parent / "data" / "kohya_presets"


def conditioner(base, **values):
    config = parse_config("dreambooth", {"no_token_padding": True, **values})
    return build_text(config, base, create_kind(config), CPU)


def test_the_unet_gets_the_batchs_caption_length_as_sd_scripts_tokenizes_it(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    tokenizer, encoder = base.tokenizers[0], base.text_encoders[0]
    # sd-scripts' dataset with the option: tokenizer(captions, padding=True, truncation=True)
    ids = tokenizer(CAPTIONS, padding=True, truncation=True, return_tensors="pt").input_ids
    assert ids.shape[1] < 77
    with torch.no_grad():
        expected = encoder(ids).last_hidden_state  # get_hidden_states on ids shorter than 77

    training = conditioner(base, learning_rate_te=1e-5)  # the text encoder trains: encoded every step
    assert not training.memoize and torch.equal(training.tokens(CAPTIONS)[0][0], ids)
    with torch.no_grad():
        hidden, _ = training(CAPTIONS)
    assert hidden.shape[1] == ids.shape[1]
    torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)

    # frozen text encoder: remembered, then cached outputs are kept at 77 tokens and cut per batch
    frozen = conditioner(base, learning_rate_te=0.0)
    assert frozen.memoize
    memo, _ = frozen(CAPTIONS)
    assert frozen.cache_outputs(CAPTIONS)
    cached, _ = frozen(CAPTIONS)
    short, _ = frozen(CAPTIONS[:1])
    assert memo.shape[1] == cached.shape[1] == ids.shape[1] and short.shape[1] == 4  # BOS sks dog EOS
    torch.testing.assert_close(memo, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached, expected, rtol=1e-4, atol=1e-5)
    plain, _ = conditioner(base, learning_rate_te=0.0, no_token_padding=False)(CAPTIONS)
    assert plain.shape[1] == 77


@pytest.mark.parametrize("values,fragment", [
    ({"sdxl": True}, "SDXL reads every caption"),
    ({"max_token_length": 150}, "set max_token_length to 75"),
    ({"weighted_captions": True}, "untick one of them"),
])
def test_no_token_padding_with_what_cannot_pad_per_batch_is_refused_with_the_fix(values, fragment):
    _, problems = validate_values("dreambooth", {"no_token_padding": True, **values})
    assert any(p.field == "no_token_padding" and fragment in p.message and p.level == "error" for p in problems)


def test_a_dreambooth_run_without_token_padding_trains(tmp_path, tiny_model_dir):
    from test_train_support import make_dataset, run_trainer, write_config

    data = make_dataset(tmp_path / "data", images=4)
    config = parse_config("dreambooth", {
        "pretrained_model_name_or_path": str(tiny_model_dir("sd1")), "train_data_dir": str(data),
        "output_dir": str(tmp_path / "out"), "output_name": "db", "resolution": "64", "enable_bucket": False,
        "train_batch_size": 2, "epoch": 1, "optimizer": "AdamW", "learning_rate": 1e-4, "learning_rate_te": 1e-4,
        "lr_scheduler": "constant", "lr_warmup": 0, "mixed_precision": "no", "save_precision": "float",
        "seed": 3, "cache_latents": True, "num_cpu_threads_per_process": 1, "no_token_padding": True})
    rc, events, err = run_trainer(write_config(config, tmp_path / "db.json"))
    assert rc == 0 and events[-1]["type"] == "done", err[-3000:]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert len(losses) == 2 and (tmp_path / "out" / "db.safetensors").exists()  # 4 images, batch 2


def test_a_kohya_ss_dreambooth_json_with_the_box_ticked_imports_it_and_exports_train_dbs_flag(tmp_path):
    data = json.loads((PRESETS / "test_dreambooth_adamw8bit.json").read_text())
    path = tmp_path / "db.json"
    path.write_text(json.dumps({**data, "no_token_padding": True}))
    loaded = load_config_file(path, "dreambooth")  # opened on the DreamBooth tab (the file has LoRA keys too)
    assert loaded.config.no_token_padding and not any("no_token_padding" in k for k in loaded.ignored_keys)
    export = sd_scripts_export(loaded.config)
    assert export.script == "train_db.py" and export.toml_data["no_token_padding"] is True
    assert "no_token_padding" not in sd_scripts_export(parse_config("dreambooth", {})).toml_data
