"""The same LoRA run on an SD2 v-prediction base and on an SDXL base (the demo covers SD1), with
aspect-ratio buckets, a sample prompt and the text encoder(s) trained — each saved file passes the
self-check against its base."""
from __future__ import annotations

import pytest
from test_train_support import lora_config, make_dataset, run_trainer, write_config


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_a_lora_run_on_each_base_family_saves_a_verified_file(tmp_path, tiny_model_dir, family):
    data = make_dataset(tmp_path / "images", images=2)
    config = lora_config(tiny_model_dir(family), data, tmp_path / "out", epoch=1, enable_bucket=True,
                         resolution="64", min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=32,
                         sample_every_n_epochs=1, sample_prompts="toy, red circle --w 64 --h 64 --s 2",
                         sample_at_first=True)
    rc, events, err = run_trainer(write_config(config, tmp_path / "cfg.json"))
    assert rc == 0, err[-3000:]
    plan = events[0]
    assert plan["type"] == "plan" and plan["family"] == family and plan["total_steps"] == 2
    saved = [e for e in events if e["type"] == "saved"]
    assert [e["kind"] for e in saved] == ["final"] and saved[0]["verified"] is True
    # sample_at_first: the base model's picture before the first step, then the epoch's
    assert [(e["step"], e["epoch"]) for e in events if e["type"] == "sample"] == [(0, None), (2, 1)]
    assert [e["type"] for e in events].index("sample") < [e["type"] for e in events].index("step")
    assert events[-1]["type"] == "done"

    from trainer.networks.files import read_lora_file

    tensors, metadata = read_lora_file(saved[0]["path"])
    prefixes = {k.split("_")[1] for k in tensors}
    if family == "sdxl":  # kohya's SDXL names: both text encoders and the SGM U-Net blocks
        assert {"te1", "te2", "unet"} <= prefixes
        assert any(k.startswith("lora_unet_input_blocks_") for k in tensors)
        assert metadata["ss_base_model_version"].startswith("sdxl")
    else:
        assert {"te", "unet"} <= prefixes and metadata["ss_v2"] == "True"
