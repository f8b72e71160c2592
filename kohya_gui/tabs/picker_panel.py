"""The in-page file/folder browser shared by every 📂 button of one tab (logic in kohya_gui.picker)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..picker import PathRefused, confine, is_dir, is_file, list_folder, parent_within

FILE_SUFFIXES = {"pretrained_model_name_or_path": (".safetensors", ".ckpt"),
                 "vae": (".safetensors", ".ckpt", ".pt"),
                 "network_weights": (".safetensors", ".pt"),
                 "weights": (".safetensors", ".pt", ".bin"),
                 "dataset_config": (".toml",),
                 "in_json": (".json",),
                 "config_file": (".json", ".toml")}


class PickerPanel:
    """One hidden panel; `attach` wires a 📂 button so the chosen path lands in its target box."""

    def __init__(self, roots: list[Path], prefix: str) -> None:
        self.roots = roots
        self.targets: dict[str, tuple[gr.components.Component, str]] = {}
        with gr.Group(visible=False, elem_id=f"{prefix}-picker") as self.group:
            self.title = gr.Markdown()
            with gr.Row():
                self.folder = gr.Textbox(label="Folder (type a path and press Enter)", scale=6,
                                         elem_id=f"{prefix}-picker-folder")
                self.up = gr.Button("⬆ Up", scale=0, min_width=80, elem_id=f"{prefix}-picker-up")
            self.entries = gr.Radio(label="Contents (click a folder to open it, a file to select it)",
                                    choices=[], elem_id=f"{prefix}-picker-entries")
            self.message = gr.Markdown(elem_id=f"{prefix}-picker-message")
            with gr.Row():
                self.use_folder = gr.Button("Use this folder", variant="primary",
                                            elem_id=f"{prefix}-picker-use-folder")
                self.use_file = gr.Button("Use selected file", variant="primary",
                                          elem_id=f"{prefix}-picker-use-file")
                self.cancel = gr.Button("Cancel", elem_id=f"{prefix}-picker-cancel")
        self.target = gr.State("")
        self.selected = gr.State("")

    # ---- pure helpers (tested directly) ---------------------------------------------------------
    def start_folder(self, current: str) -> Path:
        try:
            path = confine(current, self.roots) if current else self.roots[0]
        except PathRefused:
            return self.roots[0]
        while not is_dir(path) and path not in self.roots:
            path = path.parent
        return path if is_dir(path) else self.roots[0]

    def listing(self, folder: str, target: str) -> tuple[str, list[tuple[str, str]], str]:
        """(resolved folder, radio choices, message); refusals come back as the message."""
        kind = self.targets.get(target, (None, "any"))[1]
        want = "dir" if kind == "dir" else "any"
        try:
            real, entries = list_folder(folder, self.roots, want=want,
                                        suffixes=FILE_SUFFIXES.get(target, ()))
        except PathRefused as exc:
            return "", [], f"⛔ {exc}"
        choices = [(e.label, str(e.path)) for e in entries]
        note = "" if choices else "_(empty folder)_"
        return str(real), choices, note

    # ---- wiring ----------------------------------------------------------------------------------
    def attach(self, button: gr.Button, target: gr.components.Component, name: str, kind: str,
               label: str) -> None:
        self.targets[name] = (target, kind)

        def open_panel(current):
            start = self.start_folder(str(current or ""))
            folder, choices, note = self.listing(str(start), name)
            what = "a folder" if kind == "dir" else "a file" if kind == "file" else "a file or folder"
            return (gr.update(visible=True), f"**Choose {what} for {label}** — only folders under "
                    f"{', '.join(f'`{r}`' for r in self.roots)} can be browsed.",
                    folder, gr.update(choices=choices, value=None), note, name, "")

        button.click(open_panel, inputs=target,
                     outputs=[self.group, self.title, self.folder, self.entries, self.message, self.target,
                              self.selected], show_progress="hidden")

    def wire(self) -> None:
        """Call once after every `attach`: navigation and the 'use' buttons."""
        outputs_list = [self.folder, self.entries, self.message, self.selected]

        def goto(folder, target):
            real, choices, note = self.listing(folder, target)
            if not real:
                return gr.update(), gr.update(), note, ""
            return real, gr.update(choices=choices, value=None), note, ""

        def go_up(folder, target):
            try:
                parent = parent_within(confine(folder, self.roots), self.roots)
            except PathRefused as exc:
                return gr.update(), gr.update(), f"⛔ {exc}", ""
            return goto(str(parent), target)

        def choose(entry, folder, target):
            if not entry:
                return gr.update(), gr.update(), gr.update(), ""
            path = Path(entry)
            if is_dir(path):
                return goto(entry, target)
            return gr.update(), gr.update(), f"Selected `{path.name}`", entry

        self.folder.submit(goto, inputs=[self.folder, self.target], outputs=outputs_list)
        self.up.click(go_up, inputs=[self.folder, self.target], outputs=outputs_list)
        self.entries.input(choose, inputs=[self.entries, self.folder, self.target], outputs=outputs_list)

        names = list(self.targets)
        target_boxes = [self.targets[n][0] for n in names]

        def deliver(path_text, target):
            try:
                real = confine(path_text, self.roots) if path_text else None
            except PathRefused as exc:
                return [gr.update() for _ in names] + [gr.update(), f"⛔ {exc}"]
            if real is None:
                return [gr.update() for _ in names] + [gr.update(), "Select a file first."]
            kind = self.targets.get(target, (None, "any"))[1]
            if kind == "dir" and not is_dir(real):
                return [gr.update() for _ in names] + [gr.update(), "Choose a folder here, not a file."]
            if kind == "file" and not is_file(real):
                return [gr.update() for _ in names] + [gr.update(), "Choose a file here, not a folder."]
            ups = [gr.update(value=str(real)) if n == target else gr.update() for n in names]
            return ups + [gr.update(visible=False), ""]

        self.use_folder.click(deliver, inputs=[self.folder, self.target],
                              outputs=[*target_boxes, self.group, self.message])
        self.use_file.click(deliver, inputs=[self.selected, self.target],
                            outputs=[*target_boxes, self.group, self.message])
        self.cancel.click(lambda: gr.update(visible=False), outputs=self.group)
