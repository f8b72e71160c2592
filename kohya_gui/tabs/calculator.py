"""The step/epoch calculator: steps = Σ(images × repeats) × epochs ÷ (batch × accumulation), and back.

It can count the images of the form's own concept folders (file names only, no image decoding) so the
numbers match the dataset that will be trained.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

# the trainer's own folder and image rules (torch-free modules), so the counts match what trains
from trainer.data.images import list_images
from trainer.data.scan import CONCEPT_FOLDER
from trainer.plan import compute_plan, epochs_for_steps


def count_concepts(folder: str, recursive: bool = False) -> list[tuple[str, int, int]]:
    """(folder name, images, repeats) for each <repeats>_<name> sub-folder of `folder`."""
    root = Path(str(folder or "").strip())
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(root.iterdir()):
        match = CONCEPT_FOLDER.match(sub.name)
        if sub.is_dir() and match and int(match.group(1)) > 0 and not sub.name.startswith("."):
            found.append((sub.name, len(list_images(sub, recursive)), int(match.group(1))))
    return found


def _int(value, default: int, low: int = 0) -> int:
    try:
        return max(low, int(value))
    except (TypeError, ValueError):
        return default


def calculate(images, repeats, epochs, batch, accumulation, with_reg, target_steps) -> str:
    images, repeats = _int(images, 0), _int(repeats, 1, 1)
    epochs, batch, accumulation = _int(epochs, 1, 1), _int(batch, 1, 1), _int(accumulation, 1, 1)
    concepts = [(images, repeats)]
    reg = [(images, repeats)] if with_reg else []
    plan = compute_plan(concepts, reg, epochs, batch, accumulation)
    text = f"**{plan.total_steps} steps** — {plan.formula()}"
    target = _int(target_steps, 0)
    if target:
        try:
            need = epochs_for_steps(target, concepts, reg, batch, accumulation)
            text += f"\n\nTo reach {target} steps: **{need} epochs**."
        except ValueError as exc:
            text += f"\n\n{exc}"
    return text


class StepCalculator:
    def __init__(self, form, prefix: str) -> None:
        self.form = form
        with gr.Accordion("Step / epoch calculator", open=False, elem_id=f"{prefix}-calculator"):
            with gr.Row():
                self.images = gr.Number(label="Images", value=25, precision=0)
                self.repeats = gr.Number(label="Repeats", value=1, precision=0)
                self.epochs = gr.Number(label="Epochs", value=20, precision=0)
                self.batch = gr.Number(label="Batch size", value=1, precision=0)
                self.accum = gr.Number(label="Gradient accumulation", value=1, precision=0)
            with gr.Row():
                self.with_reg = gr.Checkbox(label="With regularization images (doubles the samples)")
                self.target = gr.Number(label="Target steps (→ epochs needed)", value=0, precision=0)
                self.from_form = gr.Button("Use my image folder and settings")
            self.result = gr.Markdown(calculate(25, 1, 20, 1, 1, False, 0), elem_id=f"{prefix}-calc-result")
        fields = [self.images, self.repeats, self.epochs, self.batch, self.accum, self.with_reg, self.target]
        for widget in fields:
            widget.change(calculate, inputs=fields, outputs=self.result, show_progress="hidden")
        self.from_form.click(self.fill_from_form, inputs=form.inputs, outputs=[*fields[:5], self.result])

    def fill_from_form(self, *raw):
        values = self.form.collect(raw)
        concepts = count_concepts(values.get("train_data_dir", ""), bool(values.get("recursive")))
        # the form may hold text that is not a number yet (its note says so); count with 1 then
        epochs = _int(values.get("epoch"), 1, 1)
        batch = _int(values.get("train_batch_size"), 1, 1)
        accum = _int(values.get("gradient_accumulation_steps"), 1, 1)
        if not concepts:
            return (gr.update(),) * 5 + ("No `<repeats>_<name>` folders found in the image folder.",)
        images = sum(n for _, n, _ in concepts)
        samples = sum(n * r for _, n, r in concepts)
        # one row per concept; the single-row calculator takes the repeat-weighted total
        plan = compute_plan([(n, r) for _, n, r in concepts], [], epochs, batch, accum)
        lines = [f"- `{name}`: {n} images × {r} repeats = {n * r}" for name, n, r in concepts]
        text = "\n".join(lines) + f"\n\n**{plan.total_steps} steps** — {plan.formula()}"
        return samples, 1, epochs, batch, accum, text if images else "The concept folders hold no images."
