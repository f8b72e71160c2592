"""LoRA tools after training: merge, svd-merge, resize, extract, show, and model conversion.

One module per tool (merge.py, svd_merge.py, resize.py, extract.py, show.py, convert.py) over
shared helpers (lora_math.py: ΔW, SVD factors, dynamic ranks; lora_io.py: files → modules and
metadata; output.py: overwrite refusal, progress, checked atomic saves, reports). Options are
declared once in options.py; cli.py is `python -m trainer lora <tool> …`. This package's
__init__ imports nothing heavy, so the GUI can read `trainer.tools.options` without torch.
"""
