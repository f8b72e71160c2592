"""Utilities, continued: group images by aspect ratio (`python -m captioning group`
child process) and the manual caption editor (an image and its caption, previous/next, saved
atomically). The editor only reads folders under the browsable roots and writes caption files."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from captioning.images import find_images
from captioning.writer import caption_path
from trainer.atomic import atomic_write_text

from ..picker import PathRefused, confine


# ---- caption editor (pure handlers, tested directly) ---------------------------------------------------
def load_folder(folder: str, ext: str, roots: list[Path]):
    """(image paths, index 0, image, caption, message) for a folder, or a message saying what is wrong."""
    try:
        path = confine(str(folder or "").strip(), roots)
        images = [str(p) for p in find_images(path)]
        caption_path(Path("x.png"), ext)  # refuses image suffixes as caption extension
    except (PathRefused, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        return [], 0, None, "", f"⛔ {exc}"
    if not images:
        return [], 0, None, "", f"⛔ {path} holds no images"
    return (images, 0, *show(images, 0, ext))


def show(images: list[str], index: int, ext: str):
    """(image, caption text, position message) of image `index`."""
    image = Path(images[index])
    cap = caption_path(image, ext)
    text = cap.read_text(encoding="utf-8").strip() if cap.is_file() else ""
    note = "" if cap.is_file() else " — no caption yet"
    return str(image), text, f"{index + 1} / {len(images)}: `{image.name}`{note}"


def save_caption(images: list[str], index: int, text: str, ext: str) -> str:
    """Write the caption of image `index` atomically when it changed; returns a message."""
    if not images:
        return "Load a folder first."
    cap = caption_path(Path(images[index]), ext)
    old = cap.read_text(encoding="utf-8").strip() if cap.is_file() else None
    new = str(text or "").strip()
    if old == new or (old is None and not new):
        return ""
    atomic_write_text(cap, new + "\n")
    return f"💾 saved `{cap.name}`"


def step(images: list[str], index: int, text: str, ext: str, delta: int):
    """Save the current caption (if edited), then move by `delta` (wrapping around)."""
    if not images:
        return 0, None, "", "Load a folder first."
    saved = save_caption(images, index, text, ext)
    index = (index + delta) % len(images)
    image, caption, where = show(images, index, ext)
    return index, image, caption, where + (f" ({saved})" if saved else "")


def group_argv(python, src, dest, size, subfolders, no_copy, pad) -> list[str]:
    argv = [python, "-m", "captioning", "group", str(src or "").strip(), str(dest or "").strip(),
            str(int(size or 4))]
    argv += ["--include_subfolders"] if subfolders else []
    argv += ["--do_not_copy_other_files"] if no_copy else []
    return argv + (["--pad"] if pad else [])


# ---- layout ------------------------------------------------------------------------------------------
def render_dataset_helpers(ctx, folder_box, stream_command) -> None:
    """Call inside Utilities ▸ Dataset tools; `folder_box(label, name)` makes a path box with 📂."""
    py, roots, cwd = ctx.python, ctx.settings.allowed_roots, str(ctx.settings.project_root)
    with gr.Accordion("Group images by aspect ratio (copies, never moves)", open=False):
        g_src = folder_box("Image folder", "group_src")
        g_dest = folder_box("Output folder (outside the image folder)", "group_dest")
        with gr.Row():
            g_size = gr.Number(label="Group size (e.g. the batch size)", value=4, precision=0)
            g_sub = gr.Checkbox(label="Include sub-folders")
            g_nocopy = gr.Checkbox(label="Do not copy captions and other files")
            g_pad = gr.Checkbox(label="Pad with black instead of cropping")
        g_btn = gr.Button("Group images", variant="primary", elem_id="util-group-run")
        g_out = gr.Textbox(label="Output", lines=6, interactive=False, elem_id="util-group-output")
    with gr.Accordion("Manual captioning (image + caption, saved atomically)", open=False):
        with gr.Row():
            c_dir = folder_box("Image folder", "caption_edit_folder")
            c_ext = gr.Textbox(label="Caption extension", value=".txt", scale=0, min_width=120)
            c_load = gr.Button("Load", scale=0, min_width=90, elem_id="util-caption-load")
        images, index = gr.State([]), gr.State(0)
        with gr.Row():
            c_image = gr.Image(label="Image", type="filepath", interactive=False, height=360)
            with gr.Column():
                c_where = gr.Markdown(elem_id="util-caption-where")
                c_text = gr.Textbox(label="Caption", lines=6, elem_id="util-caption-text")
                with gr.Row():
                    c_prev = gr.Button("◀ Previous", elem_id="util-caption-prev")
                    c_save = gr.Button("💾 Save", variant="primary", elem_id="util-caption-save")
                    c_next = gr.Button("Next ▶", elem_id="util-caption-next")
    g_btn.click(lambda *a: (yield from stream_command(group_argv(py, *a), cwd)),
                inputs=[g_src, g_dest, g_size, g_sub, g_nocopy, g_pad], outputs=g_out)
    c_load.click(lambda f, e: load_folder(f, e, roots), inputs=[c_dir, c_ext],
                 outputs=[images, index, c_image, c_text, c_where])
    nav = [images, index, c_text, c_ext]
    c_prev.click(lambda *a: step(*a, -1), inputs=nav, outputs=[index, c_image, c_text, c_where])
    c_next.click(lambda *a: step(*a, 1), inputs=nav, outputs=[index, c_image, c_text, c_where])
    c_save.click(lambda i, n, t, e: save_caption(i, n, t, e) or "no changes to save", inputs=nav,
                 outputs=c_where)
