"""python -m trainer plan|preflight|run|export-sd-scripts CONFIG, demo DIR, verify LORA --base MODEL, options --type T,
lora merge|svd-merge|resize|extract|show|convert … (the LoRA tools, docs/lora_tools.md).

CONFIG is the project's JSON/TOML or a Kohya_ss GUI JSON (`--type` says which training type when the
file does not). `run` writes the event stream (docs/events.md) on stdout and logs on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

TYPES = ("lora", "dreambooth", "textual_inversion", "finetune")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "train: events on stdout, logs and a progress bar on stderr"),
                            ("plan", "print the step/epoch plan"),
                            ("preflight", "check the dataset and report every problem")):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("config", help="project JSON/TOML or Kohya_ss GUI JSON")
        c.add_argument("--type", choices=TYPES, help="training type when the file does not say")
        if name == "run":
            c.add_argument("--events", help="also append the event lines to this file")
        else:
            c.add_argument("--json", action="store_true", help="print JSON instead of text")
    e = sub.add_parser("export-sd-scripts", help="write the sd-scripts --config_file TOML and print the "
                       "accelerate command that trains the same run with kohya's own scripts")
    e.add_argument("config", help="project JSON/TOML or Kohya_ss GUI JSON")
    e.add_argument("--type", choices=TYPES, help="training type when the file does not say")
    e.add_argument("--out", help="folder for the TOML and the prompts file (default: the config's folder)")
    e.add_argument("--sd-scripts", default="sd-scripts", dest="sd_scripts",
                   help="path of the sd-scripts checkout (default: sd-scripts, as inside kohya_ss)")
    d = sub.add_parser("demo", help="write a tiny model, a toy dataset and a ready LoRA config")
    d.add_argument("folder")
    v = sub.add_parser("verify", help="check a LoRA file against a base model's modules (key map, shapes)",
                       add_help=False)
    v.add_argument("rest", nargs=argparse.REMAINDER)
    t = sub.add_parser("lora", help="LoRA tools: merge, svd-merge, resize, extract, show, convert", add_help=False)
    t.add_argument("rest", nargs=argparse.REMAINDER)
    o = sub.add_parser("options", help="list every option of a training type with its default and help")
    o.add_argument("--type", choices=TYPES, default="lora")
    return p


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"
                        if os.environ.get("WORLD_SIZE", "1") != "1" else "%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(path: str, training_type: str | None):
    from trainer.config import load_config_file

    loaded = load_config_file(path, training_type)
    for note in loaded.notes:
        logging.getLogger("trainer").info("config: %s", note)
    if loaded.ignored_keys:
        logging.getLogger("trainer").warning("config: Kohya_ss keys ignored: %s", ", ".join(loaded.ignored_keys))
    return loaded


def cmd_run(args) -> int:
    from trainer.events import EventWriter, claim_stdout_for_events
    from trainer.train.faults import describe
    from trainer.train.stop import StopSignal

    stop = StopSignal().install()  # before anything slow, so an early Ctrl-C still ends cleanly
    stream = claim_stdout_for_events()
    main = os.environ.get("RANK", "0") == "0"
    events = EventWriter(stream=stream, path=args.events, enabled=main)
    try:
        loaded = _load(args.config, args.type)
        for key in loaded.ignored_keys:
            events.warning(f"Kohya_ss setting {key!r} has no counterpart here and was ignored")
        from trainer.train.run import run_training
    except BaseException as exc:  # noqa: BLE001 — the stream must end in `failed`
        fault = describe(exc)
        events.error(fault.message, fault.hint)
        events.failed(fault.message, fault.hint, fault.exit_code)
        return fault.exit_code
    code = run_training(loaded.config, events, stop)
    events.close()
    return code


def _scan(config):
    """What the run would train on, reporting problems instead of raising and writing nothing."""
    if config.training_type == "finetune":  # Kohya's metadata workflow, not concept folders
        from trainer.kinds.finetune_dataset import scan_metadata

        return scan_metadata(config, strict=False, write=False)
    from trainer.data.scan import scan_dataset

    return scan_dataset(config, strict=False)


def cmd_plan(args) -> int:
    from trainer.data.preflight import exact_plan
    from trainer.plan import compute_plan, epoch_save_interval
    from trainer.vram import config_family, estimate_vram

    config = _load(args.config, args.type).config
    scan = _scan(config)
    plan = exact_plan(scan, config)  # the count preflight and the trainer use
    if plan is None:
        concepts, regs = [], []
        for ds in scan.datasets:
            for sub in ds.subsets:
                (regs if sub.spec.is_reg else concepts).append((len(sub.items), sub.spec.num_repeats))
        plan = compute_plan(concepts, regs, epochs=config.epoch, batch_size=config.train_batch_size,
                            gradient_accumulation_steps=config.gradient_accumulation_steps,
                            max_train_steps=config.max_train_steps, num_processes=config.num_processes)
    family, variant = config_family(config)
    vram = estimate_vram(family, config, variant) if family else None
    every = epoch_save_interval(plan.epochs, config.save_every_n_epochs, config.save_n_epoch_ratio)
    if args.json:
        held = len(scan.validation.items) if scan.validation else 0
        print(json.dumps({**plan.to_dict(), "save_every_n_epochs": every, "validation_images": held,
                          "problems": [p.to_dict() for p in scan.problems],
                          "family": family, "vram_estimate": vram.to_dict() if vram else None}, indent=2))
    else:
        print(plan.formula())
        print(f"Epoch files: every {every} epochs (and the final one)" if every else "Epoch files: the final one only")
        if scan.validation:
            print(f"{len(scan.validation.items)} images held out for the validation loss (validation_split)")
        if vram:
            print(f"VRAM: about {vram.total_gb} GB for {family} with these settings ({vram.note})")
        for p in scan.problems:
            print(f"{p.level}: {p}")
    return 0 if not scan.of("error") else 1


def cmd_preflight(args) -> int:
    from trainer.data.preflight import preflight

    config = _load(args.config, args.type).config
    report = preflight(config, scan=_scan(config))
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else report.to_text())
    return 0 if report.ok else 1


def cmd_export(args) -> int:
    from pathlib import Path

    from trainer.config.sd_scripts_export import sd_scripts_export, write_sd_scripts_files

    loaded = _load(args.config, args.type)
    folder = Path(args.out) if args.out else Path(args.config).resolve().parent
    toml_path, command = write_sd_scripts_files(loaded.config, folder, args.sd_scripts)
    for note in sd_scripts_export(loaded.config).notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"# wrote {toml_path}\n{command}")
    return 0


def cmd_demo(args) -> int:
    from trainer.train.demo import write_demo

    path = write_demo(args.folder)
    print(f"Demo ready. Train with:\n  {sys.executable} -m trainer run {path}")
    return 0


def cmd_options(args) -> int:
    from trainer.config.docs import cli_help

    print(cli_help(args.type))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:  # its own parser, so `verify --help` shows the verify options
        from trainer.networks.verify import main as verify_main

        return verify_main(argv[1:])
    if argv[:1] == ["lora"]:  # the LoRA tools parse their own (kohya-named) arguments
        from trainer.tools.cli import main as tools_main

        return tools_main(argv[1:])
    args = _parser().parse_args(argv)
    _setup_logging()
    if args.command == "run":
        return cmd_run(args)
    commands = {"plan": cmd_plan, "preflight": cmd_preflight, "demo": cmd_demo, "export-sd-scripts": cmd_export,
                "options": cmd_options}
    try:
        return commands[args.command](args)
    except (ValueError, OSError) as exc:  # config/dataset/file errors: the message says what to fix
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
