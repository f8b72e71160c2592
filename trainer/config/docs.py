"""Generate docs/options.md from the schema: `python -m trainer.config.docs > docs/options.md`."""
from __future__ import annotations

import sys

from trainer.families import FAMILY_NAMES

from .spec import SECTIONS, field_specs
from .types import CONFIG_TYPES


def _range(spec) -> str:
    if spec.choices:
        return " / ".join(repr(c) if isinstance(c, str) else str(c) for c in spec.choices)
    if spec.ge is not None or spec.le is not None:
        return f"{'' if spec.ge is None else spec.ge} … {'' if spec.le is None else spec.le}"
    return ""


def options_markdown() -> str:
    lines = ["# Options", "",
             "Generated from the schema in `trainer/config/` (`python -m trainer.config.docs > docs/options.md`);",
             "a test fails when this file is out of date. Names follow Kohya_ss so existing configs feel at",
             "home. *Types*: which training tabs have the option.", ""]
    by_name: dict[str, tuple] = {}
    for ttype, cls in CONFIG_TYPES.items():
        for spec in field_specs(cls):
            entry = by_name.setdefault(spec.name, (spec, []))
            entry[1].append(ttype)
    for key, title in SECTIONS:
        rows = [(s, types) for s, types in by_name.values() if s.section == key]
        if not rows:
            continue
        lines += [f"## {title}", "", "| option | default | allowed | level | types | help |",
                  "|---|---|---|---|---|---|"]
        for spec, types in rows:
            default = "(empty)" if spec.default in ("", None) else repr(spec.default)
            where = "all" if len(types) == len(CONFIG_TYPES) else ", ".join(types)
            help_text = spec.help.replace("|", "\\|").replace("\n", " ")
            if spec.families:  # the page shows it only for these base-model families
                help_text = f"*({', '.join(FAMILY_NAMES[f] for f in spec.families)} only)* {help_text}"
            lines.append(f"| `{spec.name}` | {default} | {_range(spec)} | {spec.level} | {where} | {help_text} |")
        lines.append("")
    return "\n".join(lines + _kohya_markdown())


def _kohya_markdown() -> list[str]:
    """What each key of a Kohya_ss GUI JSON does here (the tables kohya_import reads)."""
    from . import kohya_keys as K

    lines = ["## Kohya_ss GUI keys", "",
             "A Kohya_ss JSON (v21 … v26) is read as kohya_ss reads it (docs/kohya_import.md). A key named like "
             "an option above is that option; numbers written as strings are parsed; \"\" and None mean "
             "\"not given\" (the default applies).", "",
             "| Kohya_ss key | here |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in K.RENAMED.items()]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in K.SPECIAL.items()]
    lines += [f"| `{k}` 0 | {'not used' if v is None else v} (kohya_ss leaves 0 out; sd-scripts' default applies) |"
              for k, v in K.ZERO_MEANS.items()]
    families = ", ".join(f"`{k}`" for k in K.UNSUPPORTED_FAMILIES)
    lines += [f"| {families}, LoRA_type {', '.join(K.FAMILY_LORA_TYPES)} | refused: model family not supported "
              "yet (their own settings stay quiet) |",
              "| " + ", ".join(f"`{k}`" for k in sorted(K.GUI_ONLY)) + " | GUI, upload or launcher only: read "
              "quietly |",
              "| any other key | listed as ignored when its value would change the training |", ""]
    return lines


def cli_help(training_type: str) -> str:
    """Plain-text option list for `python -m trainer options --type ...`."""
    out = []
    for key, title in SECTIONS:
        specs = [s for s in field_specs(CONFIG_TYPES[training_type]) if s.section == key]
        if specs:
            out.append(f"[{title}]")
            out += [f"  {s.name} = {s.default!r}  {_range(s)}\n      {s.help}" for s in specs]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(options_markdown())
