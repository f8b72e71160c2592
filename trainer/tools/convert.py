"""Convert a Stable Diffusion model between a single file (.safetensors/.ckpt, original layout)
and a diffusers folder, at a chosen precision (sd-scripts' convert_diffusers20_original_sd.py)."""
from __future__ import annotations

import torch

from .output import Report, ToolError, check_inputs, check_output

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}


def convert_model(model_to_load, model_to_save, save_precision_as: str = "float", family: str | None = None,
                  overwrite: bool = False) -> Report:
    from trainer.models import load_base_model
    from trainer.models.saving import save_diffusers, save_single_file

    (src,) = check_inputs([model_to_load], "model_to_load")
    dst = check_output(model_to_save, overwrite, "model_to_save")
    if save_precision_as not in PRECISIONS:
        raise ToolError(f"--save_precision_as must be one of {', '.join(PRECISIONS)}, got {save_precision_as!r}")
    if dst.suffix and dst.suffix.lower() not in (".safetensors", ".ckpt"):
        raise ToolError(f"model_to_save {dst}: use .safetensors or .ckpt for a single file, or a name without "
                        "suffix for a diffusers folder")
    if dst.resolve() == src.resolve():
        raise ToolError("model_to_save is the model being converted; choose another path")
    dtype = PRECISIONS[save_precision_as]
    base = load_base_model(src, family=family)
    if dst.suffix:
        save_single_file(base, dst, dtype=dtype, title=dst.stem, overwrite=overwrite)
        layout = "single file"
    else:
        save_diffusers(base, dst, dtype=dtype, overwrite=overwrite)
        layout = "diffusers folder"
    again = load_base_model(dst, family=base.family)
    sd_a, sd_b = base.unet.state_dict(), again.unet.state_dict()
    bad = [k for k in sd_a if k not in sd_b or not torch.equal(sd_a[k].to(dtype).float(), sd_b[k].float())]
    if bad or again.v_prediction != base.v_prediction:
        raise ToolError(f"{dst} was written but reads back different (U-Net {bad[:2]}, v-prediction "
                        f"{base.v_prediction}→{again.v_prediction}); do not use it")
    pred = "v-prediction" if base.v_prediction else "epsilon"
    text = (f"Converted {src.name} ({base.family}, {pred}) to the {layout} {dst} at {save_precision_as}. "
            "It was loaded back: same family, prediction type and U-Net weights.")
    return Report("convert", str(dst), text, {"family": base.family, "layout": layout})
