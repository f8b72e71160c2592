"""One training tab (Dreambooth, LoRA, Textual Inversion, Finetuning): the generated form plus the
Configuration bar, presets, checks, Print command, Start and the overwrite confirmation."""
from __future__ import annotations

import gradio as gr

from .. import checks, configio, demo, launching, presets
from ..context import AppContext
from ..forms import TrainingForm, to_widget
from .calculator import StepCalculator
from .lora_tools import render_lora_tools
from .picker_panel import PickerPanel

DEMO_LABEL = "🧪 Demo: tiny model + synthetic dataset (CPU, under a minute)"
DEMO_WAIT = ("⏳ Preparing the demo: the first time a tiny model and four images are generated "
             "(about half a minute)…")


class TrainingTab:
    def __init__(self, ctx: AppContext, training_type: str, title: str) -> None:
        self.ctx = ctx
        self.type = training_type
        self.title = title
        s = ctx.settings
        self.form = TrainingForm(training_type, defaults=s.defaults_for(training_type), models_dir=s.models_dir)
        self.prefix = training_type

    # ---- layout --------------------------------------------------------------------------------------
    def render(self) -> None:
        p = self.prefix
        with gr.Tab(self.title, id=f"tab-{p}", elem_id=f"tab-{p}"):
            with gr.Tab("Training"):
                with gr.Accordion("Configuration", open=True, elem_id=f"{p}-section-configuration"):
                    with gr.Row(equal_height=True):
                        self.config_path = gr.Textbox(label="Config file (.json / .toml, or a Kohya_ss .json)",
                                                      scale=6, elem_id=f"{p}-config-path")
                        self.config_pick = gr.Button("📂 Browse", scale=0, min_width=100,
                                                     elem_id=f"{p}-config-pick")
                        self.load_btn = gr.Button("↩ Load", scale=0, min_width=90, elem_id=f"{p}-load")
                        self.save_btn = gr.Button("💾 Save", scale=0, min_width=90, elem_id=f"{p}-save")
                        self.save_overwrite = gr.Checkbox(label="Overwrite", value=False, scale=0, min_width=110)
                    with gr.Row(equal_height=True):
                        self.preset = gr.Dropdown(label="Preset", choices=self._preset_labels(), scale=5,
                                                  elem_id=f"{p}-preset")
                        self.apply_btn = gr.Button("Apply preset", scale=0, min_width=130,
                                                   elem_id=f"{p}-apply-preset")
                        self.demo_btn = gr.Button("🧪 Demo", scale=0, min_width=100, elem_id=f"{p}-demo")
                        self.user_preset_name = gr.Textbox(label="Save the form as my preset", scale=3,
                                                           placeholder="e.g. my 12GB portraits")
                        self.user_preset_overwrite = gr.Checkbox(label="Overwrite", value=False, scale=0,
                                                                 min_width=110)
                        self.user_preset_btn = gr.Button("Save preset", scale=0, min_width=120)
                    self.config_msg = gr.Markdown(elem_id=f"{p}-config-msg")
                self.picker = PickerPanel(self.ctx.settings.allowed_roots, p)
                self.form.render()
                self.calculator = StepCalculator(self.form, p)
                with gr.Row():
                    self.check_btn = gr.Button("✔ Check settings", elem_id=f"{p}-check")
                    self.print_btn = gr.Button("Print training command", elem_id=f"{p}-print")
                    self.start_btn = gr.Button("▶ Start training (or add to queue)", variant="primary",
                                               elem_id=f"{p}-start")
                with gr.Group(visible=False, elem_id=f"{p}-confirm") as self.confirm_group:
                    self.confirm_md = gr.Markdown()
                    with gr.Row():
                        self.confirm_btn = gr.Button("Confirm and start", variant="stop",
                                                     elem_id=f"{p}-confirm-overwrite")
                        self.cancel_btn = gr.Button("Cancel", elem_id=f"{p}-confirm-cancel")
                self.status = gr.Markdown(elem_id=f"{p}-status")
                self.summary = gr.Markdown(elem_id=f"{p}-summary")
                self.plan = gr.Markdown(elem_id=f"{p}-plan")
                with gr.Group(visible=False) as self.command_group:
                    self.command_code = gr.Code(label="Training command", language="shell", interactive=False,
                                                elem_id=f"{p}-command")
                    self.toml_code = gr.Code(label="Trainer config (TOML)", language=None, interactive=False,
                                             elem_id=f"{p}-toml")
            if self.type == "lora":  # kohya_ss's LoRA ▸ Tools
                with gr.Tab("LoRA tools", elem_id="lora-tools"):
                    render_lora_tools(self.ctx)
        self._wire()

    # ---- helpers -----------------------------------------------------------------------------------
    def _presets(self) -> list[presets.Preset]:
        s = self.ctx.settings
        return presets.list_presets(s.presets_dir, s.user_presets_dir, self.type)

    def _preset_labels(self) -> list[str]:
        return [DEMO_LABEL] + [p.label for p in self._presets()]

    def _checked(self, values: dict, preflight: bool = True) -> checks.CheckResult:
        s = self.ctx.settings
        return checks.check_all(self.type, values, self.form.specs, python=s.python, workspace=s.workspace,
                                cwd=s.project_root, preflight=preflight, roots=s.allowed_roots)

    def _outputs(self, message=None) -> list:
        """Form updates, summary, plan, confirmation, and the message box (status or config bar)."""
        return [*self.form.inputs, self.summary, self.plan, self.confirm_group, self.confirm_md,
                message or self.status]

    def _result(self, values: dict, result: checks.CheckResult | None, *, set_values=False, status="",
                confirm: str | None = None) -> list:
        problems = result.problems if result else []
        ups = self.form.updates(values, problems, set_values=set_values)
        summary = checks.summary_markdown(result, self.form.labels) if result else ""
        plan = checks.plan_markdown(result.plan, result.vram) if result else ""
        return [*ups, summary, plan, gr.update(visible=confirm is not None), confirm or "", status]

    def _load_into_form(self, path: str) -> tuple[dict, str]:
        values, notes = configio.read_values(path, self.type, roots=self.ctx.settings.allowed_roots)
        merged = {**self.form.initial_values(), **values}
        # checked as the boxes will show them (an empty number is "empty", not "'' is not a number")
        shown = self.form.collect([to_widget(spec, merged[spec.name]) for spec in self.form.specs])
        return shown, "\n\n".join(notes)

    # ---- handlers ------------------------------------------------------------------------------------
    def load(self, path, *raw):
        current = self.form.collect(raw)
        try:
            values, note = self._load_into_form(path)
        except configio.LoadError as exc:
            return self._result(current, None, status=f"⛔ {exc}")
        return self._result(values, self._checked(values, preflight=False), set_values=True, status=note)

    def save(self, path, overwrite, *raw):
        values = self.form.collect(raw)
        result = checks.check_values(self.type, values, self.form.specs)
        data = configio.values_to_dict(self.type, values, result.config)
        try:
            saved = configio.save_values(path, data, overwrite=bool(overwrite),
                                         roots=self.ctx.settings.allowed_roots)
        except configio.LoadError as exc:
            return f"⛔ {exc}"
        extra = "" if result.config is not None else f" It has {len(result.errors)} problem(s) to fix."
        return f"💾 Saved `{saved}`.{extra}"

    def apply_preset(self, label, *raw):
        current = self.form.collect(raw)
        if label == DEMO_LABEL:
            return self.apply_demo(*raw)
        preset = presets.find_preset(self._presets(), label or "")
        if preset is None:
            return self._result(current, None, status="Choose a preset first.")
        family = self.form.family(current)
        chosen = preset.values_for(family)
        known = set(self.form.by_name)
        new, changes, kept = presets.apply_checked(
            current, chosen, known, lambda v: checks.check_values(self.type, v, self.form.specs).problems)
        skipped = [k for k in chosen if k not in known]
        text = presets.describe_changes(preset.name, changes, self.form.labels, skipped, kept)
        text = f"{presets.column_note(preset, family)}\n\n{text}"
        if preset.description:
            text = f"{preset.description}\n\n{text}"
        return self._result(new, self._checked(new, preflight=False), set_values=True, status=text)

    def apply_demo(self, *raw):
        s = self.ctx.settings
        current = self.form.collect(raw)
        try:
            path = demo.prepare_demo(s.python, s.workspace, cwd=s.project_root, training_type=self.type)
            values, note = self._load_into_form(str(path))
        except (demo.DemoError, configio.LoadError) as exc:
            return self._result(current, None, status=f"⛔ {exc}")
        known = set(self.form.by_name)
        _, changes = presets.apply_values(current, values, known)
        text = presets.describe_changes("Demo", changes, self.form.labels)
        result = self._checked(values, preflight=False)
        return self._result(values, result, set_values=True,
                            status=f"{note}\n\nThe demo trains a tiny random model on CPU; press **Start**. "
                                   "Pressing Demo and Start again trains again (the earlier result is moved "
                                   f"aside after you confirm).\n\n{text}")

    def save_user_preset(self, name, overwrite, *raw):
        values = self.form.collect(raw)
        try:
            path = presets.save_user_preset(self.ctx.settings.user_presets_dir, self.type, name, values,
                                            self.form.specs, overwrite=bool(overwrite))
        except presets.PresetError as exc:
            return f"⛔ {exc}", gr.update()
        return f"Saved your preset `{path.name}`.", gr.update(choices=self._preset_labels())

    def check(self, *raw):
        values = self.form.collect(raw)
        return self._result(values, self._checked(values))

    def print_command(self, *raw):
        values = self.form.collect(raw)
        result = checks.check_values(self.type, values, self.form.specs)
        if result.config is None:
            return [*self._result(values, result, status="Fix the problems first; the command needs valid "
                                                          "settings."), gr.update(visible=False), "", ""]
        if not result.config.output_dir:
            return [*self._result(values, result, status="Choose an output folder: the command's config files "
                                  "are written there."), gr.update(visible=False), "", ""]
        command, toml_text = launching.runnable_commands(result.config, self.ctx.python)
        return [*self._result(values, result, status=f"Wrote the config files to `{result.config.output_dir}`."),
                gr.update(visible=True), command, toml_text]

    def start(self, confirmed: bool, *raw):
        values = self.form.collect(raw)
        result = self._checked(values)
        if not result.ok:
            return self._result(values, result, status="⛔ Training not started: fix the problems listed "
                                                        "below (they are also shown next to each field).")
        # resuming continues the files of the stopped run: the trainer knows they are its own
        existing = [] if result.config.resume else launching.existing_outputs(result.config)
        too_big = result.vram is not None and result.vram.too_big
        if (existing or too_big) and not confirmed:
            reasons = [launching.overwrite_message(existing)] if existing else []
            if too_big:  # an estimate, not a measurement: the user decides
                reasons.append(f"### VRAM\n{result.vram.line}\n\nPress **Confirm and start** to train anyway (the "
                               "run stops with an out-of-memory error if it does not fit), or **Cancel** and change "
                               "the settings.")
            return self._result(values, result, confirm="\n\n".join(reasons),
                                status="Waiting for your confirmation.")
        moved = ""
        if existing:
            try:
                folder = launching.move_aside(existing, result.config)
            except OSError as exc:
                return self._result(values, result, status=f"⛔ Training not started: the earlier results could "
                                    f"not be moved aside ({exc.strerror or exc}).")
            moved = f"  \nThe earlier results were moved to `{folder}`."
        queue = self.ctx.queue
        busy, paused = queue.is_busy(), queue.paused
        job = launching.enqueue(queue, result.config, python=self.ctx.python, start=not paused)
        if paused:
            where = f"Added to the paused queue: **{job.name}** starts when you press ▶ Run queue."
        elif busy:
            where = f"Added to the queue: **{job.name}** waits for the running job."
        else:
            where = f"▶ Started **{job.name}**. Follow it in the monitor below."
        return self._result(values, result, status=f"{where}  \nRun folder: `{job.run_dir}`{moved}")

    # ---- wiring --------------------------------------------------------------------------------------
    def _wire(self) -> None:
        f = self.form
        outs = self._outputs()
        cfg_outs = self._outputs(self.config_msg)
        # one progress indicator per answer, on its message box: not one timer on each of ~250 fields
        on_cfg, on_summary = {"show_progress_on": self.config_msg}, {"show_progress_on": self.summary}
        self.load_btn.click(self.load, inputs=[self.config_path, *f.inputs], outputs=cfg_outs, **on_cfg)
        self.config_path.submit(self.load, inputs=[self.config_path, *f.inputs], outputs=cfg_outs, **on_cfg)
        self.save_btn.click(self.save, inputs=[self.config_path, self.save_overwrite, *f.inputs],
                            outputs=self.config_msg)
        # the dropdown shows a preset only while it is the last thing applied to the form
        self.apply_btn.click(self.apply_preset, inputs=[self.preset, *f.inputs], outputs=cfg_outs, **on_cfg)
        self.preset.input(lambda label: (DEMO_WAIT if label == DEMO_LABEL else "Applying…"),
                          inputs=self.preset, outputs=self.config_msg, queue=False).then(
            self.apply_preset, inputs=[self.preset, *f.inputs], outputs=cfg_outs, **on_cfg)
        self.demo_btn.click(lambda: DEMO_WAIT, outputs=self.config_msg, queue=False).then(
            self.apply_demo, inputs=f.inputs, outputs=cfg_outs, **on_cfg).then(
            lambda: gr.update(value=DEMO_LABEL), outputs=self.preset)
        for trigger in (self.load_btn.click, self.config_path.submit):
            trigger(lambda: gr.update(value=None), outputs=self.preset, queue=False)
        self.user_preset_btn.click(self.save_user_preset,
                                   inputs=[self.user_preset_name, self.user_preset_overwrite, *f.inputs],
                                   outputs=[self.config_msg, self.preset])
        self.check_btn.click(self.check, inputs=f.inputs, outputs=outs, **on_summary)
        self.print_btn.click(self.print_command, inputs=f.inputs,
                             outputs=[*outs, self.command_group, self.command_code, self.toml_code], **on_summary)
        self.start_btn.click(lambda *raw: self.start(False, *raw), inputs=f.inputs, outputs=outs, **on_summary)
        self.confirm_btn.click(lambda *raw: self.start(True, *raw), inputs=f.inputs, outputs=outs, **on_summary)
        self.cancel_btn.click(lambda: (gr.update(visible=False), "Not started."),
                              outputs=[self.confirm_group, self.status])
        # every 📂 button (and the config file's) opens the shared in-page browser
        self.picker.attach(self.config_pick, self.config_path, "config_file", "file", "the config file")
        for name, button in f.pick_buttons.items():
            spec = f.by_name[name]
            self.picker.attach(button, f.components[name], name, spec.kind, spec.label)
        self.picker.wire()

