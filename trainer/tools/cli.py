"""`python -m trainer lora <tool> …`: the LoRA tools from a shell (see docs/lora_tools.md).

Progress bars and logs go to stderr; the one-paragraph report (or, with --json, the report
object) to stdout. Exit status 0 = done, 2 = bad input (the message says what to fix).
"""
from __future__ import annotations

import json
import sys

from .options import TOOLS, build_parser

PROG = "python -m trainer lora"


def _usage() -> str:
    rows = "\n".join(f"  {t.name:<15} {t.summary}" for t in TOOLS.values())
    return f"usage: {PROG} <tool> [options]\n\ntools:\n{rows}\n\n{PROG} <tool> --help shows a tool's options."


def _run(name: str, o) -> "object":
    def base_model(path):
        if not path:
            return None
        from trainer.models import load_base_model

        return load_base_model(path)

    if name == "resize":
        from .resize import resize_lora

        return resize_lora(o.model, o.save_to, o.new_rank, o.new_conv_rank, o.dynamic_method, o.dynamic_param,
                           o.save_precision, o.device, o.overwrite, o.verbose, base=base_model(o.base))
    if name == "svd-merge":
        from .svd_merge import svd_merge_loras

        return svd_merge_loras(o.models, o.save_to, o.ratios, o.new_rank, o.new_conv_rank, o.save_precision,
                               o.device, o.clamp_quantile, o.overwrite, base=base_model(o.base))
    if name == "merge":
        from .merge import merge_into_model, merge_loras

        if o.sd_model:
            return merge_into_model(o.sd_model, o.models, o.save_to, o.ratios, o.save_precision, o.family,
                                    o.overwrite)
        return merge_loras(o.models, o.save_to, o.ratios, o.save_precision, o.overwrite, base=base_model(o.base))
    if name == "extract":
        from .extract import extract_lora

        return extract_lora(o.model_org, o.model_tuned, o.save_to, o.dim, o.conv_dim, o.clamp_quantile,
                            o.min_diff, o.sdxl, o.v2, o.save_precision, o.device, o.overwrite)
    if name == "extract-locon":
        from .extract_locon import extract_locon

        return extract_locon(o.base_model, o.db_model, o.output_name, o.mode, o.linear_dim, o.conv_dim,
                             o.linear_threshold, o.conv_threshold, o.linear_ratio, o.conv_ratio, o.linear_quantile,
                             o.conv_quantile, o.min_diff, o.is_sdxl, o.is_v2, o.save_precision, o.device, o.overwrite)
    if name == "merge-lycoris":
        from .merge_lycoris import merge_lycoris

        return merge_lycoris(o.base_model, o.lycoris_model, o.output_name, o.weight, o.dtype, o.device, o.is_sdxl,
                             o.is_v2, o.overwrite)
    if name == "extract-dylora":
        from .extract_dylora import extract_dylora

        return extract_dylora(o.model, o.save_to, o.unit, o.new_rank, o.save_precision, o.overwrite)
    if name == "show":
        from .show import show_lora

        return show_lora(o.model)
    if name == "convert":
        from .convert import convert_model

        return convert_model(o.model_to_load, o.model_to_save, o.save_precision_as, o.family, o.overwrite)
    raise KeyError(name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in TOOLS:
        print(f"error: unknown LoRA tool {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    tool = TOOLS[name]
    args = build_parser(tool, PROG).parse_args(rest)
    as_json = args.json
    values = {k: v for k, v in vars(args).items() if k != "json"}
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    from trainer.models.checkpoint_io import CheckpointError
    from trainer.networks.files import LoRAFileError

    from .output import ToolError

    try:
        options = tool.options.model_validate(values)
        report = _run(name, options)
    except (ToolError, LoRAFileError, CheckpointError, FileExistsError, FileNotFoundError, ValueError,
            OSError) as exc:
        if as_json:
            print(json.dumps({"tool": name, "error": str(exc)}, ensure_ascii=False))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        print(report.text)
        for w in report.warnings:
            print(f"warning: {w}")
        if name == "show" and options.metadata:
            from .show import metadata_text

            print(metadata_text(report.details))
    return 0
