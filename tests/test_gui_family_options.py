"""The model section shows the chosen family's own options: picking a FLUX.1, SD3.5 or SD model (by its file or
by Kohya_ss's family checkboxes) switches what the training tab shows, and hidden options keep their values."""
from __future__ import annotations

import json

import pytest
import torch

from trainer.config import CONFIG_TYPES, field_specs
from trainer.families import DIT_FAMILIES, DIT_MARKERS, FLUX_FAMILIES, SD3_FAMILIES, SD_FAMILIES
from gui_tab import make_tab, raw_values, split_output

FLUX_ONLY = ("guidance_scale", "ae", "timestep_sampling", "model_prediction_type", "train_blocks")
DIT_ONLY = ("t5xxl", "clip_l", "blocks_to_swap", "weighting_scheme", "t5xxl_max_token_length", "train_t5xxl")
SD3_ONLY = ("clip_g",)
SD_ONLY = ("v2", "v_parameterization", "clip_skip", "min_snr_gamma", "noise_offset", "max_token_length")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoint files in the BFL / SAI / CompVis layouts, cut down to the keys the page reads (the page
    detects the family from the safetensors header only; the full tiny models are the trainer tests')."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("family-models")
    keys = {"flux": DIT_MARKERS["flux"], "sd3": "model.diffusion_model." + DIT_MARKERS["sd3"],
            "sd1": "cond_stage_model.transformer.text_model.final_layer_norm.weight"}
    out = {}
    for family, key in keys.items():
        out[family] = root / f"{family}.safetensors"
        save_file({key: torch.zeros(4)}, str(out[family]))
    return out


@pytest.fixture
def tab(tmp_path):
    return make_tab(tmp_path / "ws", tmp_path)


def shown_after_change(tab, **values) -> dict[str, bool]:
    """What the page shows after the user changes `values`: the controllers' change handler, called with the
    controllers' widget values as Gradio sends them."""
    form = tab.form
    deps = form.controllers()
    names = list(deps)
    targets = list({d.name: d for ds in deps.values() for d in ds}.values())
    raw = dict(zip(form.names, raw_values(tab, **values)))
    updates = form.visibility_updates(names, targets, *[raw[n] for n in names])
    return {t.name: u["visible"] for t, u in zip(targets, updates)}


def test_the_family_applicability_is_declared_once_in_the_schema():
    """The GUI lists no option: every family-specific field carries `families=` in trainer/config."""
    specs = {s.name: s for s in field_specs(CONFIG_TYPES["lora"])}
    assert all(specs[n].families == FLUX_FAMILIES for n in FLUX_ONLY)
    assert all(specs[n].families == DIT_FAMILIES for n in DIT_ONLY)
    assert specs["clip_g"].families == SD3_FAMILIES
    assert all(specs[n].families == SD_FAMILIES for n in SD_ONLY)
    assert specs["flux1_checkbox"].families is None and specs["learning_rate"].families is None


def test_choosing_a_flux_file_shows_the_flux_options_and_hides_the_sd_ones(tab, models):
    shown = shown_after_change(tab, pretrained_model_name_or_path=str(models["flux"]))
    assert all(shown[n] for n in FLUX_ONLY + DIT_ONLY), "detected from the file's keys, no checkbox needed"
    assert not any(shown[n] for n in SD_ONLY + SD3_ONLY)


def test_an_sd3_file_shows_sd3_options_and_not_flux_ones(tab, models):
    shown = shown_after_change(tab, pretrained_model_name_or_path=str(models["sd3"]))
    assert all(shown[n] for n in SD3_ONLY + DIT_ONLY)
    assert not any(shown[n] for n in FLUX_ONLY + SD_ONLY)


def test_an_sd_model_shows_only_the_sd_options(tab, models):
    shown = shown_after_change(tab, pretrained_model_name_or_path=str(models["sd1"]))
    assert all(shown[n] for n in SD_ONLY)
    assert not any(shown[n] for n in FLUX_ONLY + DIT_ONLY + SD3_ONLY)


def test_the_kohya_checkbox_switches_the_family_and_unticking_switches_back(tab, models):
    sd = str(models["sd1"])
    assert shown_after_change(tab, pretrained_model_name_or_path=sd)["clip_skip"]
    ticked = shown_after_change(tab, pretrained_model_name_or_path=sd, flux1_checkbox=True)
    assert ticked["guidance_scale"] and not ticked["clip_skip"]
    sd3 = shown_after_change(tab, pretrained_model_name_or_path=sd, sd3_checkbox=True)
    assert sd3["clip_g"] and not sd3["guidance_scale"]
    back = shown_after_change(tab, pretrained_model_name_or_path=sd, flux1_checkbox=False)
    assert back["clip_skip"] and not back["guidance_scale"]


def test_a_field_whose_controller_is_hidden_hides_with_it(tab, models):
    """logit_mean shows for weighting_scheme logit_normal — but not when an SD model hides weighting_scheme."""
    flux = shown_after_change(tab, pretrained_model_name_or_path=str(models["flux"]),
                              weighting_scheme="logit_normal")
    assert flux["logit_mean"] and flux["logit_std"] and not flux["mode_scale"]
    sd = shown_after_change(tab, pretrained_model_name_or_path=str(models["sd1"]), weighting_scheme="logit_normal")
    assert not sd["logit_mean"]


def test_loading_a_flux_config_shows_its_options_and_hidden_values_are_saved(tab, models, tmp_path):
    """Switching to an SD model hides guidance_scale, but the value the user set is kept and saved."""
    config = tmp_path / "flux.json"
    config.write_text(json.dumps({"config_version": 1, "training_type": "lora", "guidance_scale": 1.0,
                                  "pretrained_model_name_or_path": str(models["flux"])}))
    fields, *_ = split_output(tab, tab.load(str(config), *raw_values(tab)))
    assert fields["guidance_scale"]["visible"] and fields["guidance_scale"]["value"] == "1.0"
    assert fields["clip_skip"]["visible"] is False
    # the user picks an SD model: the FLUX field hides, its value stays in the (hidden) widget
    raw = raw_values(tab, pretrained_model_name_or_path=str(models["sd1"]), guidance_scale=1.0, clip_skip=2)
    assert shown_after_change(tab, pretrained_model_name_or_path=str(models["sd1"]))["guidance_scale"] is False
    target = tmp_path / "saved.json"
    assert "Saved" in tab.save(str(target), False, *raw)
    saved = json.loads(target.read_text())
    assert saved["guidance_scale"] == 1.0 and saved["clip_skip"] == 2
    fields, *_ = split_output(tab, tab.load(str(target), *raw_values(tab)))
    assert fields["guidance_scale"]["value"] == "1.0" and fields["guidance_scale"]["visible"] is False
    assert fields["clip_skip"]["visible"] is True


def test_the_model_note_names_the_family_whose_options_show(tab, models):
    form = tab.form
    values = form.initial_values() | {"pretrained_model_name_or_path": str(models["sd1"])}
    assert "Detected: SD1.x" in form._family_text(values)
    forced = form._family_text(values | {"flux1_checkbox": True})
    assert "Trained as **FLUX.1**" in forced and "options that apply to FLUX.1" in forced


def test_hub_ids_and_diffusers_folders_of_flux_and_sd3_are_recognised(tmp_path):
    from kohya_gui.modelinfo import detect_family

    assert detect_family("black-forest-labs/FLUX.1-dev")[0] == "flux"
    assert detect_family("stabilityai/stable-diffusion-3.5-large")[0] == "sd3"
    assert detect_family("stabilityai/stable-diffusion-xl-base-1.0")[0] == "sdxl"
    folder = tmp_path / "flux-diffusers"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert detect_family(str(folder))[0] == "flux"
