"""Training forms generated from the option schema (trainer.config): no parameter is listed here.

Each schema section becomes an accordion in Kohya's order; basic options are shown, advanced ones
fold into an inner "Advanced" accordion; options whose `visible_if` rule does not hold are hidden, and so
are options declared for other model families (`families=`) than the chosen one (a ticked family checkbox,
else the family detected from the base model). Hidden fields keep their values: saving writes them.
Problems from validation are shown in place of the field's help text (and styled as errors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from trainer.config import CONFIG_TYPES, SECTIONS, FieldSpec, field_specs
from trainer.families import FAMILY_FLAGS, FAMILY_NAMES, chosen_family

from . import modelinfo

PICKABLE = ("path", "dir", "file")
ERROR_CLASS = "field-error"
WARNING_CLASS = "field-warning"
ROW_WIDTH = 3
MODEL_FIELD = "pretrained_model_name_or_path"
FAMILY_INPUTS = (MODEL_FIELD, *(flag for flag, _ in FAMILY_FLAGS))  # what decides the chosen family


def specs_for(training_type: str) -> list[FieldSpec]:
    return field_specs(CONFIG_TYPES[training_type])


def section_titles() -> dict[str, str]:
    return dict(SECTIONS)


# ---- pure value conversion (unit tested without a browser) -----------------------------------

def to_python(spec: FieldSpec, raw: Any) -> Any:
    """A widget value → the value the schema expects (what validate_values receives)."""
    if spec.kind == "bool":
        return bool(raw)
    if spec.kind in ("int", "float"):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return raw             # validation names the field and the bad text
        if spec.kind == "int" and number.is_integer():
            return int(number)
        return number
    if spec.kind == "choice":
        for choice in spec.choices or []:
            if choice == raw or str(choice) == str(raw):
                return choice
        return raw
    if raw is None:
        return None if spec.optional else ""
    text = str(raw)
    return text.strip() if spec.kind in PICKABLE else text


def is_optional_number(spec: FieldSpec) -> bool:
    """Numbers where empty means something (e.g. unet_lr: empty = learning_rate)."""
    return spec.kind in ("int", "float") and spec.optional


def number_text(value: Any) -> str:
    """How a number box shows a value; text that is not a number (e.g. "abc" from an imported file)
    is shown as it came, so the user sees what the note beside the field is about."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A schema value → what the widget shows. Numbers live in text boxes: Gradio's Number and
    Slider check (and round) a value before any handler of ours runs, so an empty string from a
    Kohya_ss file or a value below the minimum would raise a nameless error and blank the form."""
    if spec.kind in ("int", "float"):
        return number_text(value)
    if value is None:
        return ""
    return value


def is_visible(spec: FieldSpec, values: dict) -> bool:
    """visible_if: every named field must hold one of the allowed values."""
    if not spec.visible_if:
        return True
    return all(values.get(name) in allowed for name, allowed in spec.visible_if.items())


def applies_to(spec: FieldSpec, family: str | None) -> bool:
    """An option declared for other families is hidden; with no family known (no model chosen, or not
    detected) every option shows."""
    return family is None or not spec.families or family in spec.families


def visibility(specs: list[FieldSpec], values: dict, family: str | None) -> dict[str, bool]:
    """{option: shown}: its family applies, its visible_if holds, and every field that rule names is itself
    shown (logit_mean hides with weighting_scheme when an SD model is chosen)."""
    by_name = {s.name: s for s in specs}
    shown: dict[str, bool] = {}

    def visible(spec: FieldSpec) -> bool:
        if spec.name not in shown:
            shown[spec.name] = True  # a rule naming itself (directly or not) cannot recurse forever
            shown[spec.name] = applies_to(spec, family) and is_visible(spec, values) and all(
                visible(by_name[name]) for name in (spec.visible_if or {}) if name in by_name)
        return shown[spec.name]

    for spec in specs:
        visible(spec)
    return shown


def problems_by_field(problems) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for problem in problems:
        grouped.setdefault(problem.field, []).append(problem)
    return grouped


def field_note(spec: FieldSpec, problems: list) -> tuple[str, list[str]]:
    """(info text, css classes) for a field: its problems replace the help text while they last."""
    if not problems:
        return spec.help, []
    errors = [p for p in problems if p.is_error]
    shown = errors or problems
    marker = "⚠" if errors else "ℹ"
    text = " ".join(f"{marker} {p.message}" + _hint_head(p) for p in shown)
    return text, [ERROR_CLASS if errors else WARNING_CLASS]


def _hint_head(problem) -> str:
    hint = str(getattr(problem, "hint", "") or "").split("\n")[0]
    return f" — {hint}" if hint and hint not in problem.message else ""


def _range_text(spec: FieldSpec) -> str:
    kind = "a whole number" if spec.kind == "int" else "a number"
    if spec.ge is not None and spec.le is not None:
        return f"{kind}, {spec.ge:g} to {spec.le:g}"
    if spec.ge is not None:
        return f"{kind}, at least {spec.ge:g}"
    return kind


@dataclass
class TrainingForm:
    """The generated widgets of one training tab and the conversions around them."""

    training_type: str
    defaults: dict = field(default_factory=dict)
    models_dir: Any = None
    specs: list[FieldSpec] = field(init=False)
    components: dict[str, gr.components.Component] = field(init=False, default_factory=dict)
    pick_buttons: dict[str, gr.Button] = field(init=False, default_factory=dict)
    family_md: gr.Markdown | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.specs = specs_for(self.training_type)
        self.by_name = {s.name: s for s in self.specs}
        self.labels = {s.name: s.label for s in self.specs}

    # ---- values -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def inputs(self) -> list:
        return [self.components[n] for n in self.names]

    def initial_values(self) -> dict:
        values = {s.name: s.default for s in self.specs}
        values.update({k: v for k, v in self.defaults.items() if k in self.by_name})
        return values

    def collect(self, raw_values) -> dict:
        """Widget values in `inputs` order → {option: python value}."""
        return {s.name: to_python(s, raw) for s, raw in zip(self.specs, raw_values)}

    def shown(self, values: dict) -> dict[str, bool]:
        """Which fields the page shows for these (complete) values."""
        return visibility(self.specs, values, self.family(values))

    def updates(self, values: dict, problems=(), *, set_values: bool = True) -> list:
        """One gr.update per input: value (optional), visibility and the problem note."""
        grouped = problems_by_field(problems)
        shown = self.shown({**self.initial_values(), **values})
        out = []
        for spec in self.specs:
            info, classes = field_note(spec, grouped.get(spec.name, []))
            kwargs = {"visible": shown[spec.name], "info": info, "elem_classes": classes}
            if set_values and spec.name in values:
                kwargs["value"] = to_widget(spec, values[spec.name])
            out.append(gr.update(**kwargs))
        return out

    # ---- rendering ----------------------------------------------------------------------------
    def render(self) -> None:
        """Create the section accordions inside the current Blocks context."""
        values = self.initial_values()
        self._shown = self.shown(values)
        for key, title in SECTIONS:
            section_specs = [s for s in self.specs if s.section == key]
            if not section_specs:
                continue
            basic = [s for s in section_specs if s.level == "basic"]
            advanced = [s for s in section_specs if s.level != "basic"]
            with gr.Accordion(title, open=bool(basic), elem_id=f"{self.training_type}-section-{key}"):
                if key == "model":
                    self.family_md = gr.Markdown(self._family_text(values), elem_classes=["family-note"])
                self._render_rows(basic, values)
                if advanced:
                    with gr.Accordion(f"Advanced: {title.split(': ')[-1].lower()}", open=False,
                                      elem_id=f"{self.training_type}-advanced-{key}"):
                        self._render_rows(advanced, values)
        self._wire_visibility()
        self._wire_family()

    def _render_rows(self, specs: list[FieldSpec], values: dict) -> None:
        for start in range(0, len(specs), ROW_WIDTH):
            with gr.Row(equal_height=False):
                for spec in specs[start:start + ROW_WIDTH]:
                    self._render_field(spec, values)

    def _render_field(self, spec: FieldSpec, values: dict) -> None:
        value = to_widget(spec, values.get(spec.name, spec.default))
        common = dict(label=spec.label, info=spec.help, visible=self._shown[spec.name],
                      elem_id=f"{self.training_type}-{spec.name}", interactive=True)
        if spec.kind in PICKABLE:
            with gr.Column(min_width=280):
                with gr.Row(equal_height=True):
                    self.components[spec.name] = self._path_widget(spec, value, common)
                    self.pick_buttons[spec.name] = gr.Button(
                        "📂 Browse", scale=0, min_width=100, elem_id=f"{self.training_type}-{spec.name}-pick")
            return
        if spec.kind == "bool":
            widget = gr.Checkbox(value=bool(value), **common)
        elif spec.kind in ("int", "float"):
            placeholder = "empty = default" if is_optional_number(spec) else _range_text(spec)
            widget = gr.Textbox(value=value, lines=1, max_lines=1, placeholder=placeholder,
                                elem_classes=["number-box"], **common)
        elif spec.kind == "choice":
            widget = gr.Dropdown(choices=list(spec.choices or []), value=value, **common)
        elif spec.kind == "text":
            widget = gr.Textbox(value=value, lines=4, max_lines=20, **common)
        else:
            widget = gr.Textbox(value=value, lines=1, max_lines=1, **common)
        self.components[spec.name] = widget

    def _path_widget(self, spec: FieldSpec, value, common: dict):
        suggestions = self._suggestions(spec)
        if suggestions is None:
            return gr.Textbox(value=value, lines=1, max_lines=1, scale=8, **common)
        choices = list(dict.fromkeys([*suggestions, *([value] if value else [])]))
        return gr.Dropdown(choices=choices, value=value, allow_custom_value=True, scale=8, **common)

    def _suggestions(self, spec: FieldSpec) -> list[str] | None:
        """Dropdown suggestions for the base model (models/checkpoints + hub ids); None = plain text."""
        if spec.name == "pretrained_model_name_or_path" and self.models_dir is not None:
            return modelinfo.list_models(self.models_dir) + modelinfo.HUB_MODELS
        return None

    def refresh_model_choices(self, current: str):
        choices = modelinfo.list_models(self.models_dir) + modelinfo.HUB_MODELS
        if current and current not in choices:
            choices.insert(0, current)
        return gr.update(choices=choices, value=current)

    # ---- events ---------------------------------------------------------------------------------
    def controllers(self) -> dict[str, list[FieldSpec]]:
        """Fields that other fields' visibility depends on → those dependents (the family inputs → every
        option declared for some families)."""
        deps: dict[str, list[FieldSpec]] = {}
        for spec in self.specs:
            names = list(spec.visible_if or {}) + (list(FAMILY_INPUTS) if spec.families else [])
            for name in dict.fromkeys(names):
                if name in self.by_name:
                    deps.setdefault(name, []).append(spec)
        return deps

    def visibility_updates(self, names: list[str], targets: list[FieldSpec], *raw) -> list:
        """The change handler: controller widget values (in `names` order) → visibility of `targets`.
        Visibility depends on the controllers alone, so the other fields' values are not needed."""
        values = {**self.initial_values(), **{n: to_python(self.by_name[n], r) for n, r in zip(names, raw)}}
        shown = self.shown(values)
        return [gr.update(visible=shown[t.name]) for t in targets]

    def _wire_visibility(self) -> None:
        deps = self.controllers()
        names = list(deps)
        targets = list({d.name: d for dependents in deps.values() for d in dependents}.values())
        # one handler for every controller: a family switch also hides what a hidden field controls
        for name in names:
            self.components[name].change(lambda *raw: self.visibility_updates(names, targets, *raw),
                                         inputs=[self.components[n] for n in names],
                                         outputs=[self.components[t.name] for t in targets],
                                         show_progress="hidden", queue=False)

    def _family_text(self, values: dict) -> str:
        detected, text = modelinfo.detect_family(str(values.get(MODEL_FIELD) or ""))
        family = chosen_family(values, detected)
        if family is not None and family != detected:
            text += f" Trained as **{FAMILY_NAMES[family]}** (its checkbox is ticked)."
        if family is not None:
            text += f" The page shows the options that apply to {FAMILY_NAMES[family]}."
        return f"**Base model:** {text}"

    def _wire_family(self) -> None:
        names = [n for n in FAMILY_INPUTS if n in self.components]
        if MODEL_FIELD not in names or self.family_md is None:
            return
        for name in names:
            self.components[name].change(
                lambda *raw: self._family_text({n: to_python(self.by_name[n], r) for n, r in zip(names, raw)}),
                inputs=[self.components[n] for n in names], outputs=self.family_md, show_progress="hidden")

    def family(self, values: dict) -> str | None:
        """The family these values train: a ticked family checkbox, else the one detected from the model."""
        detected, _ = modelinfo.detect_family(str(values.get(MODEL_FIELD) or ""))
        return chosen_family(values, detected)
