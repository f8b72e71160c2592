"""The training forms are generated from the option schema, and values survive form ↔ config round trips."""
from __future__ import annotations

import gradio as gr
import pytest

from kohya_gui import checks
from kohya_gui.forms import TrainingForm, field_note, is_visible, to_python, to_widget
from trainer.config import CONFIG_TYPES, SECTIONS, config_to_dict, field_specs, validate_values
from trainer.problems import Problem

TYPES = list(CONFIG_TYPES)


def _widget_value(update: dict):
    return update.get("value")


@pytest.mark.parametrize("training_type", TYPES)
def test_every_schema_option_gets_a_widget_in_section_order(training_type):
    """A user sees every option the schema declares — no hand-made list can forget one."""
    form = TrainingForm(training_type)
    with gr.Blocks():
        form.render()
    specs = field_specs(CONFIG_TYPES[training_type])
    assert list(form.components) != []
    assert set(form.components) == {s.name for s in specs}
    order = [k for k, _ in SECTIONS]
    rendered_sections = [form.by_name[n].section for n in form.components]
    assert rendered_sections == sorted(rendered_sections, key=order.index), "sections follow Kohya's order"
    for spec in specs:
        if spec.kind in ("path", "dir", "file"):
            assert spec.name in form.pick_buttons, f"{spec.name} needs a 📂 browse button"


@pytest.mark.parametrize("training_type", TYPES)
def test_untouched_form_is_the_schema_defaults(training_type):
    """Opening a tab and collecting the form gives exactly the schema's default config."""
    form = TrainingForm(training_type)
    shown = [to_widget(s, s.default) for s in form.specs]
    values = form.collect(shown)
    assert values == {s.name: s.default for s in form.specs}
    config, problems = validate_values(training_type, {**values, "token_string": "mychar"}
                                       if training_type == "textual_inversion" else values)
    assert config is not None, problems


def test_config_round_trips_through_the_form():
    """Values loaded into the LoRA form come back unchanged when the form is read again."""
    form = TrainingForm("lora")
    config = CONFIG_TYPES["lora"](network_dim=32, network_alpha=16.0, LoRA_type="Kohya LoCon", conv_dim=4,
                                  unet_lr=None, text_encoder_lr=5e-5, max_token_length=150,
                                  sample_prompts="a photo --w 512\nanother", resolution="768,512")
    data = {k: v for k, v in config_to_dict(config).items() if k in form.by_name}
    updates = form.updates(data)
    widget_values = [_widget_value(u) for u in updates]
    back, problems = validate_values("lora", form.collect(widget_values))
    assert back == config, problems


def test_empty_optional_learning_rate_means_use_the_base_rate():
    form = TrainingForm("lora")
    spec = form.by_name["unet_lr"]
    assert to_widget(spec, None) == ""
    assert to_python(spec, "") is None
    assert to_python(spec, " 2e-4 ") == pytest.approx(2e-4)


def test_conv_rank_is_hidden_unless_locon_is_chosen():
    """Options irrelevant to the current choice are hidden (visible_if from the schema)."""
    form = TrainingForm("lora")
    conv = form.by_name["conv_dim"]
    assert not is_visible(conv, {"LoRA_type": "Standard"})
    assert is_visible(conv, {"LoRA_type": "Kohya LoCon"})
    updates = dict(zip(form.names, form.updates({"LoRA_type": "Kohya LoCon"})))
    assert updates["conv_dim"]["visible"] is True
    updates = dict(zip(form.names, form.updates({"LoRA_type": "Standard"})))
    assert updates["conv_dim"]["visible"] is False
    assert "conv_dim" in {d.name for d in form.controllers()["LoRA_type"]}


def test_a_problem_replaces_the_help_text_of_its_field_until_fixed():
    form = TrainingForm("lora")
    values = form.initial_values() | {"output_name": "bad/name"}
    result = checks.check_values("lora", values, form.specs)
    updates = dict(zip(form.names, form.updates(values, result.problems, set_values=False)))
    assert "⚠" in updates["output_name"]["info"] and "unsafe" in updates["output_name"]["info"]
    assert updates["output_name"]["elem_classes"] == ["field-error"]
    assert "value" not in updates["output_name"], "checking never rewrites what the user typed"
    fixed = dict(zip(form.names, form.updates(values, [], set_values=False)))
    assert fixed["output_name"]["info"] == form.by_name["output_name"].help
    assert fixed["output_name"]["elem_classes"] == []


def test_warning_notes_are_marked_differently_from_errors():
    spec = TrainingForm("lora").by_name["train_data_dir"]
    text, classes = field_note(spec, [Problem.at("train_data_dir", "2 images are upscaled", "warning")])
    assert text.startswith("ℹ") and classes == ["field-warning"]


def test_gui_defaults_file_values_prefill_the_form():
    form = TrainingForm("lora", defaults={"network_dim": 24, "not_an_option": 1})
    values = form.initial_values()
    assert values["network_dim"] == 24 and "not_an_option" not in values
