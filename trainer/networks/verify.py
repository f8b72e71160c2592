"""`python -m trainer.networks.verify LORA --base MODEL`: the "Verify LoRA" check from a shell.

Loads the base model with `trainer.models.load_base_model`, checks the LoRA file against it
(see `checks.py`) and prints the report; exit status 0 when the file is fine, 1 when not,
2 when a file cannot be read.
"""

from __future__ import annotations

import json
import sys

from .checks import VerifyReport, check_state_dict, verify_lora_file  # noqa: F401  (public names)
from .files import LoRAFileError
from .naming import DIT_FAMILIES, FAMILIES


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m trainer.networks.verify",
                                description="Check a kohya-format LoRA file against a base model.")
    p.add_argument("lora", help="the LoRA .safetensors file")
    p.add_argument("--base", required=True, help="base model: single file, diffusers folder or hub id")
    p.add_argument("--family", choices=FAMILIES + DIT_FAMILIES, help="override the detected base family")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    from trainer.models import load_base_model  # the models package owns loading

    try:
        base = load_base_model(args.base, family=args.family)
        report = verify_lora_file(args.lora, base)
    except (LoRAFileError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
