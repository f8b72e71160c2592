"""Before Start the page estimates the run's VRAM (unmeasured) for the chosen settings and compares it with the
card: the plan line names both, and Start asks to confirm when the estimate is above the card."""
from __future__ import annotations

import json

import pytest

from kohya_gui import envcheck, presets, vramcheck
from trainer.config import CONFIG_TYPES
from trainer.vram import estimate_vram
from gui_tab import make_tab, raw_values, split_output


@pytest.fixture
def tab(tmp_path):
    return make_tab(tmp_path / "ws", tmp_path)


@pytest.fixture
def flux_run(tmp_path):
    """A FLUX.1 diffusers folder (only its index: the page reads no weights, and knows the family from it) and a
    one-image dataset."""
    from PIL import Image

    model = tmp_path / "FLUX.1-dev"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    images = tmp_path / "images" / "5_toy"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(images / "a.png")
    (tmp_path / "out").mkdir()
    return dict(pretrained_model_name_or_path=str(model), train_data_dir=str(images.parent),
                output_dir=str(tmp_path / "out"), output_name="toy", resolution="1024", enable_bucket=False,
                optimizer="AdamW", gradient_checkpointing=True)


def test_start_asks_first_when_the_estimate_is_above_the_card(tab, flux_run):
    """FLUX.1 in bf16 without fp8 or cached text needs far more than a 12 GB card."""
    raw = raw_values(tab, **flux_run, card_vram_gb=12)
    fields, summary, plan, confirm, confirm_text, message = split_output(tab, tab.start(False, *raw))
    assert "unmeasured" in plan and "may not fit the card's 12 GB" in plan
    assert confirm["visible"] is True and "Confirm and start" in confirm_text
    assert "above the card" in fields["card_vram_gb"]["info"], "the note sits next to the GPU memory field too"
    assert tab.ctx.queue.snapshot() == [], "nothing starts before the user confirms"
    *_, message = split_output(tab, tab.start(True, *raw))
    assert "paused queue" in message and len(tab.ctx.queue.snapshot()) == 1


def test_the_12_gb_flux_preset_lists_its_changes_and_then_fits(tab, flux_run):
    """The preset's FLUX.1 column (fp8 base, cached text, 16 blocks swapped) brings the estimate under 12 GB."""
    twelve = next(p for p in tab._presets() if p.vram_gb == 12)
    raw = raw_values(tab, **flux_run, card_vram_gb=12)
    fields, *_, message = split_output(tab, tab.apply_preset(twelve.label, *raw))
    assert "FLUX.1 column" in message
    assert "(`blocks_to_swap`): `0` → `16`" in message and "(`fp8_base`): `False` → `True`" in message
    applied = [fields[name].get("value", old) for name, old in zip(tab.form.names, raw)]
    _, _, plan, confirm, _, message = split_output(tab, tab.start(False, *applied))
    assert "Fits the card's 12 GB (card_vram_gb)" in plan and "unmeasured" in plan
    assert confirm["visible"] is False and "paused queue" in message


def test_the_detected_card_is_used_when_no_size_is_entered(tab, flux_run, monkeypatch):
    """card_vram_gb 0 = the CUDA card the environment check found (its subprocess result, injected here)."""
    monkeypatch.setitem(envcheck._cache, tab.ctx.python,
                        {"gpus": [{"index": 0, "name": "RTX 4090", "vram_gb": 24.0},
                                  {"index": 1, "name": "RTX 3060", "vram_gb": 12.0}]})
    config = CONFIG_TYPES["lora"](**flux_run, fp8_base=True, cache_text_encoder_outputs=True,
                                  network_train_unet_only=True)
    first = vramcheck.check_vram(config, tab.ctx.python)
    assert first.card_gb == 24.0 and "detected RTX 4090" in first.line and not first.too_big
    second = vramcheck.check_vram(config.model_copy(update={"gpu_ids": "1"}), tab.ctx.python)
    assert second.card_gb == 12.0 and "detected RTX 3060" in second.line
    monkeypatch.setitem(envcheck._cache, tab.ctx.python, {"gpus": []})
    none = vramcheck.check_vram(config, tab.ctx.python)
    assert none.card_gb is None and not none.too_big and "GPU memory (GB)" in none.line


def test_a_tiny_test_model_gets_no_full_size_estimate(tmp_path):
    """The demo's and tests' tiny models hold a few thousand parameters: a 12-billion estimate would mislead."""
    import torch
    from safetensors.torch import save_file

    from trainer.families import DIT_MARKERS

    model = tmp_path / "tiny-flux.safetensors"
    save_file({DIT_MARKERS["flux"]: torch.zeros(96, 32)}, str(model))
    config = CONFIG_TYPES["lora"](pretrained_model_name_or_path=str(model), card_vram_gb=4)
    check = vramcheck.check_vram(config, "unused")
    assert check.estimate_gb is None and not check.too_big and "test model" in check.line
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"x")
    assert vramcheck.check_vram(config.model_copy(update={"pretrained_model_name_or_path": str(garbage)}),
                                "unused") is None, "an unreadable file is the model check's to report"


def test_each_family_column_of_a_preset_fits_its_own_tier_by_the_estimate(tab):
    """The presets and the estimate agree: a family's column of the N GB preset is estimated at N GB or less, so
    applying your card's preset silences the warning (both unmeasured until a GPU is lent)."""
    variants = {"flux": "", "chroma": "", "sd3": "large", "sdxl": ""}
    for preset in tab._presets():
        for family in preset.family_values:
            values = tab.form.initial_values() | preset.values_for(family)
            kept = {k: v for k, v in values.items() if v is not None and k in tab.form.by_name}
            config = CONFIG_TYPES["lora"](**kept)
            estimate = estimate_vram(family, config, variants[family])
            assert estimate.total_gb <= preset.vram_gb, (preset.name, family, estimate)
    eight = next(p for p in tab._presets() if p.vram_gb == 8)
    assert "no SD3.5 column" in presets.column_note(eight, "sd3")
