"""VRAM presets fill the form and list what they changed; users save their own presets."""
from __future__ import annotations

import json

import pytest

from kohya_gui import presets
from kohya_gui.forms import TrainingForm
from kohya_gui.settings import PROJECT_ROOT
from trainer.config import CONFIG_TYPES, validate_values

SHIPPED = PROJECT_ROOT / "configs" / "presets"


def _shipped(tmp_path, training_type="lora"):
    return presets.list_presets(SHIPPED, tmp_path / "user", training_type)


def test_vram_presets_cover_6_to_24_gb_smallest_first(tmp_path):
    assert [p.vram_gb for p in _shipped(tmp_path)] == [6, 8, 12, 16, 24]


@pytest.mark.parametrize("family", [None, "sdxl", "flux", "sd3", "chroma"])
@pytest.mark.parametrize("training_type", list(CONFIG_TYPES))
def test_every_preset_gives_a_valid_config(tmp_path, family, training_type):
    """Applying any VRAM preset to a fresh form never produces an invalid setting."""
    form = TrainingForm(training_type)
    base = form.initial_values() | {"token_string": "mychar"} if training_type == "textual_inversion" \
        else form.initial_values()
    def problems_of(values):
        return validate_values(training_type, values)[1]

    for preset in _shipped(tmp_path, training_type):
        new, _, kept = presets.apply_checked(base, preset.values_for(family), set(form.by_name), problems_of)
        config, problems = validate_values(training_type, new)
        assert config is not None, (preset.name, family, problems)
        if training_type == "lora":
            assert kept == [], "the presets are written for LoRA: nothing in them is rejected there"


def test_every_preset_option_exists_in_the_schema(tmp_path):
    """No typo can hide in a preset: each name is an option of at least one training type."""
    known = {name for cls in CONFIG_TYPES.values() for name in cls.model_fields}
    for preset in _shipped(tmp_path):
        for name in [*preset.values, *(k for v in preset.family_values.values() for k in v)]:
            assert name in known, f"{preset.name}: {name} is not an option"


def test_applying_a_preset_lists_each_change(tmp_path):
    form = TrainingForm("lora")
    eight = next(p for p in _shipped(tmp_path) if p.vram_gb == 8)
    current = form.initial_values()
    new, changes = presets.apply_values(current, eight.values_for(None), set(form.by_name))
    changed = {name: (old, value) for name, old, value in changes}
    assert changed["network_dim"] == (8, 16) and new["network_dim"] == 16
    assert "mixed_precision" not in changed, "unchanged options are not listed"
    text = presets.describe_changes(eight.name, changes, form.labels)
    assert "Network rank (dimension) (`network_dim`): `8` → `16`" in text


def test_sdxl_models_get_the_sdxl_column_of_the_table(tmp_path):
    eight = next(p for p in _shipped(tmp_path) if p.vram_gb == 8)
    assert eight.values_for(None)["resolution"] == "512,512"
    sdxl = eight.values_for("sdxl")
    assert sdxl["resolution"] == "1024,1024" and sdxl["cache_text_encoder_outputs"] is True
    assert sdxl["network_train_unet_only"] is True, "cached TE outputs need UNet-only training"


def test_user_preset_keeps_settings_but_not_personal_paths(tmp_path):
    form = TrainingForm("lora")
    values = form.initial_values() | {"network_dim": 48, "train_data_dir": "/data/me", "output_name": "mine"}
    path = presets.save_user_preset(tmp_path / "user", "lora", "my portraits", values, form.specs)
    saved = json.loads(path.read_text())
    assert saved["values"] == {"network_dim": 48}
    labels = [p.label for p in _shipped(tmp_path)]
    assert "my portraits (yours)" in labels


def test_saving_a_user_preset_never_overwrites_unasked(tmp_path):
    form = TrainingForm("lora")
    values = form.initial_values() | {"network_dim": 48}
    presets.save_user_preset(tmp_path / "user", "lora", "mine", values, form.specs)
    with pytest.raises(presets.PresetError, match="already exists"):
        presets.save_user_preset(tmp_path / "user", "lora", "mine", values | {"network_dim": 4}, form.specs)
    presets.save_user_preset(tmp_path / "user", "lora", "mine", values | {"network_dim": 4}, form.specs,
                             overwrite=True)
    with pytest.raises(presets.PresetError, match="use 1–60"):
        presets.save_user_preset(tmp_path / "user", "lora", "../evil", values, form.specs)


def test_a_preset_value_the_tab_cannot_use_is_left_unchanged_and_explained(tmp_path):
    """Textual Inversion trains the text encoder, so the SDXL presets' cached TE outputs are kept off."""
    form = TrainingForm("textual_inversion")
    base = form.initial_values() | {"token_string": "mychar"}
    six = next(p for p in _shipped(tmp_path, "textual_inversion") if p.vram_gb == 6)
    new, changes, kept = presets.apply_checked(base, six.values_for("sdxl"), set(form.by_name),
                                               lambda v: validate_values("textual_inversion", v)[1])
    assert new["cache_text_encoder_outputs"] is False
    assert [name for name, _ in kept] == ["cache_text_encoder_outputs"]
    assert "Left `cache_text_encoder_outputs` unchanged" in presets.describe_changes("6 GB", changes, {}, [], kept)


def test_flux_and_sd3_models_get_their_own_columns(tmp_path):
    """FLUX.1 from 8 GB (block swap below 16), SD3.5 from 12 GB: fp8 base weights below 24 GB, cached text."""
    by_gb = {p.vram_gb: p for p in _shipped(tmp_path)}
    assert {gb for gb, p in by_gb.items() if "flux" in p.family_values} == {8, 12, 16, 24}
    assert by_gb[8].values_for("flux")["blocks_to_swap"] > by_gb[12].values_for("flux")["blocks_to_swap"] > 0
    assert {gb for gb, p in by_gb.items() if "sd3" in p.family_values} == {12, 16, 24}
    flux16 = by_gb[16].values_for("flux")
    assert flux16["fp8_base"] is True and flux16["model_prediction_type"] == "raw"
    assert flux16["cache_text_encoder_outputs"] is True and flux16["network_train_unet_only"] is True
    assert by_gb[24].values_for("flux")["fp8_base"] is False
    # Chroma (FLUX tab, model_type chroma): no distilled guidance, the T5 mask sd-scripts requires
    chroma = by_gb[12].values_for("chroma")
    assert {gb for gb, p in by_gb.items() if "chroma" in p.family_values} == {8, 12, 16, 24}
    assert chroma["model_type"] == "chroma" and chroma["guidance_scale"] == 0.0 and chroma["apply_t5_attn_mask"]
    assert chroma["blocks_to_swap"] == by_gb[12].values_for("flux")["blocks_to_swap"]
    assert by_gb[12].values_for("sd3")["weighting_scheme"] == "logit_normal"
