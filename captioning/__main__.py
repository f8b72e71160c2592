"""python -m captioning basic|wd14|blip|git|prepare|balance|group ... (option names as in kohya's scripts)."""

from __future__ import annotations

import argparse
import json
import sys

from trainer.tools.optionmodel import add_arguments

from .options import CAPTIONERS


def _existing(a) -> str:
    if a.overwrite and a.append_tags:
        raise ValueError("--overwrite and --append_tags exclude each other")
    return "overwrite" if a.overwrite else "append" if a.append_tags else "skip"


def _progress(quiet: bool):
    """A redrawn counter on a terminal; one line per batch when piped (the GUI reads lines)."""
    if quiet:
        return None
    if sys.stderr.isatty():
        return lambda done, total, path: print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr)
    return lambda done, total, path: print(f"{done}/{total} {path}".rstrip(), file=sys.stderr, flush=True)


def _output_flags(p: argparse.ArgumentParser) -> None:
    """How a run reports, not what it does: CLI only (the page reads the counter and the result line)."""
    p.add_argument("--debug", action="store_true", help="print every caption")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress counter")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for captioner in CAPTIONERS.values():  # options declared once, in captioning/options.py
        c = sub.add_parser(captioner.name, help=captioner.help)
        add_arguments(c, captioner.options)
        _output_flags(c)

    p = sub.add_parser("prepare", help="copy images into a Kohya img/reg/log/model layout")
    p.add_argument("destination_dir")
    p.add_argument("--instance_prompt", required=True)
    p.add_argument("--class_prompt", default="")
    p.add_argument("--training_images_dir", required=True)
    p.add_argument("--training_repeats", type=int, default=40)
    p.add_argument("--reg_images_dir", default=None)
    p.add_argument("--reg_repeats", type=int, default=1)
    p.add_argument("--json", action="store_true")

    g = sub.add_parser("group", help="copy images grouped by aspect ratio, cropped/padded per group")
    g.add_argument("input_folder")
    g.add_argument("output_folder")
    g.add_argument("group_size", type=int, help="images per group (e.g. the batch size)")
    g.add_argument("--include_subfolders", action="store_true")
    g.add_argument("--do_not_copy_other_files", "--no_copy", action="store_true",
                   help="do not copy the captions and other same-named files")
    g.add_argument("--pad", action="store_true", help="pad with black instead of cropping")
    g.add_argument("--json", action="store_true")
    g.add_argument("--quiet", action="store_true")
    bal = sub.add_parser("balance", help="propose (and with --yes apply) N_ repeat prefixes per concept")
    bal.add_argument("dataset_dir")
    bal.add_argument("--steps_per_concept", type=int, default=1000)
    bal.add_argument("--rename_unprefixed", action="store_true", help="also rename folders without N_")
    bal.add_argument("--yes", action="store_true", help="rename the folders as previewed")
    bal.add_argument("--json", action="store_true")

    return ap


def _print_run(run, a) -> None:
    if a.json:
        print(json.dumps(run.to_dict(), ensure_ascii=False, indent=1))
        return
    if a.debug:
        for path, text in run.captions.items():
            print(f"{path}: {text}")
    print(run.summary(top_tags=50 if getattr(a, "frequency_tags", False) else 0))
    fixes = "choose Overwrite or Append" if a.command == "wd14" else "choose Overwrite"
    print(f"result: {run.report(fixes)}")


def cmd_basic(a) -> int:
    from .basic import basic_captions, check_edit

    edit = check_edit(a.caption_text, a.prefix, a.postfix, a.find_text, a.replace_text, a.overwrite)
    run = basic_captions(a.train_data_dir, edit, a.caption_extension, a.recursive, _progress(a.quiet or a.json))
    if a.json:
        print(json.dumps(run.to_dict(), ensure_ascii=False, indent=1))
        return 0
    if a.debug:
        for path, text in run.captions.items():
            print(f"{path}: {text}")
    print(run.summary())
    print(f"result: {run.report()}")
    return 0


def cmd_wd14(a) -> int:
    from .tags import TagOptions
    from .wd14 import DEFAULT_REPO_ID, tag_images

    opts = TagOptions(
        thresh=a.thresh, general_threshold=a.general_threshold, character_threshold=a.character_threshold,
        general_mcut_enabled=a.general_mcut_enabled, character_mcut_enabled=a.character_mcut_enabled,
        undesired_tags=a.undesired_tags, always_first_tags=a.always_first_tags, prefix_tags=a.prefix,
        postfix_tags=a.postfix, character_tags_first=a.character_tags_first, use_rating_tags=a.use_rating_tags,
        use_rating_tags_as_last_tag=a.use_rating_tags_as_last_tag, remove_underscore=a.remove_underscore,
        escape_parentheses=a.escape_parentheses, tag_replacement=a.tag_replacement,
        character_tag_expand=a.character_tag_expand, caption_separator=a.caption_separator, order=a.tag_order,
    )  # fmt: skip
    run = tag_images(
        a.train_data_dir, model_dir=a.model_dir, repo_id=a.repo_id or DEFAULT_REPO_ID,
        force_download=a.force_download, options=opts, caption_extension=a.caption_extension,
        existing=_existing(a), recursive=a.recursive, batch_size=a.batch_size,
        max_data_loader_n_workers=a.max_data_loader_n_workers,
        providers=["CPUExecutionProvider"] if a.cpu else None, progress=_progress(a.quiet or a.json),
    )  # fmt: skip
    _print_run(run, a)
    return 0


def cmd_blip(a) -> int:
    from .blip import caption_images

    run = caption_images(
        a.train_data_dir, model=a.model, beam_search=a.beam_search, num_beams=a.num_beams, top_p=a.top_p,
        temperature=a.temperature, min_length=a.min_length, max_length=a.max_length,
        repetition_penalty=a.repetition_penalty, length_penalty=a.length_penalty, text_prompt=a.text_prompt,
        prefix=a.prefix, postfix=a.postfix, caption_extension=a.caption_extension, existing=_existing(a),
        recursive=a.recursive, batch_size=a.batch_size, max_data_loader_n_workers=a.max_data_loader_n_workers,
        seed=a.seed, device=a.device, dtype=a.dtype, progress=_progress(a.quiet or a.json),
    )  # fmt: skip
    _print_run(run, a)
    return 0


def cmd_git(a) -> int:
    from .git import caption_images

    run = caption_images(
        a.train_data_dir, model_id=a.model_id, max_length=a.max_length, remove_words_=a.remove_words,
        prefix=a.prefix, postfix=a.postfix, caption_extension=a.caption_extension, existing=_existing(a),
        recursive=a.recursive, batch_size=a.batch_size, max_data_loader_n_workers=a.max_data_loader_n_workers,
        device=a.device, dtype=a.dtype, progress=_progress(a.quiet or a.json),
    )  # fmt: skip
    _print_run(run, a)
    return 0


def cmd_prepare(a) -> int:
    from .dataset_tools import prepare_training_folders

    r = prepare_training_folders(
        a.instance_prompt, a.class_prompt, a.training_images_dir, a.destination_dir,
        a.training_repeats, a.reg_images_dir, a.reg_repeats,
    )  # fmt: skip
    if a.json:
        print(json.dumps(r.to_dict(), ensure_ascii=False, indent=1))
    else:
        print(f"copied {r.copied} file(s), {r.already_there} already there; {r.images} images, {r.reg_images} reg")
        for c in r.conflicts:
            print(f"left untouched (a different file has that name): {c}")
        for k, v in r.config_fields().items():
            print(f"{k} = {v}")
    return 0


def cmd_balance(a) -> int:
    from .dataset_tools import apply_balance, plan_balance

    plan = plan_balance(a.dataset_dir, a.steps_per_concept, a.rename_unprefixed)
    if a.yes:
        apply_balance(plan, confirm=True)
    if a.json:
        print(json.dumps(plan.to_dict(), ensure_ascii=False, indent=1))
        return 0
    print(plan.preview())
    if a.yes:
        print(f"renamed {len(plan.renamed)} folder(s)")
    elif plan.renames:
        print("nothing renamed yet: run again with --yes to apply")
    return 0


def cmd_group(a) -> int:
    from .aspect_groups import group_images

    r = group_images(a.input_folder, a.output_folder, a.group_size, a.include_subfolders,
                     a.do_not_copy_other_files, a.pad, progress=_progress(a.quiet or a.json))
    if a.json:
        print(json.dumps(r.to_dict(), ensure_ascii=False, indent=1))
        return 0
    print(f"{len(r.groups)} group(s): wrote {r.written} image(s), copied {r.copied} other file(s) into "
          f"{r.output_folder}")
    for c in r.conflicts:
        print(f"left untouched (the name is taken): {c}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handler = {"basic": cmd_basic, "wd14": cmd_wd14, "blip": cmd_blip, "git": cmd_git, "prepare": cmd_prepare,
               "balance": cmd_balance, "group": cmd_group}
    try:
        return handler[a.command](a)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
