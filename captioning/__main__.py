"""python -m captioning wd14|blip|git|prepare|balance|group ... (option names as in kohya's scripts)."""

from __future__ import annotations

import argparse
import json
import sys

B = argparse.BooleanOptionalAction


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


def _common(p: argparse.ArgumentParser, ext: str, batch: int) -> None:
    p.add_argument("train_data_dir", help="folder with the images")
    p.add_argument("--caption_extension", "--caption_extention", default=ext)
    p.add_argument("--recursive", action="store_true", help="also caption images in sub-folders")
    p.add_argument("--batch_size", type=int, default=batch)
    p.add_argument("--max_data_loader_n_workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--overwrite", action="store_true", help="replace existing captions (default: keep them)")
    p.add_argument("--append_tags", "--append", action="store_true", help="add to existing captions, no duplicates")
    p.add_argument("--debug", action="store_true", help="print every caption")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress counter")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    w = sub.add_parser("wd14", help="tag images with a WD14 (SmilingWolf) ONNX tagger")
    _common(w, ".txt", 8)
    w.add_argument("--model_dir", default=None, help="folder with model.onnx + selected_tags.csv, or the "
                   "store holding <owner>_<repo>/ folders (default models/taggers)")  # fmt: skip
    w.add_argument("--repo_id", default=None, help="hub repo or short name (e.g. eva02-large-v3)")
    w.add_argument("--force_download", action="store_true")
    w.add_argument("--thresh", type=float, default=0.35, help="threshold for both categories")
    w.add_argument("--general_threshold", type=float, default=None)
    w.add_argument("--character_threshold", type=float, default=None)
    w.add_argument("--general_mcut_enabled", action="store_true", help="MCut per image for general tags")
    w.add_argument("--character_mcut_enabled", action="store_true", help="MCut (>= 0.15) for characters")
    w.add_argument("--undesired_tags", default="")
    w.add_argument("--always_first_tags", default="", help="tags moved to the front when detected")
    w.add_argument("--prefix", default="", help="tags always written first (e.g. a trigger word)")
    w.add_argument("--postfix", default="", help="tags always written last")
    w.add_argument("--character_tags_first", action="store_true")
    w.add_argument("--use_rating_tags", action="store_true", help="rating tag first")
    w.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="rating tag last")
    w.add_argument("--remove_underscore", action=B, default=True, help="long_hair -> long hair (not kaomoji)")
    w.add_argument("--escape_parentheses", action="store_true", help=r"( -> \( for A1111 prompts")
    w.add_argument("--tag_replacement", default=None, help=r"'src,dst;src2,dst2' (\, and \; escape)")
    w.add_argument("--character_tag_expand", action="store_true", help="name_(series) -> name, series")
    w.add_argument("--caption_separator", default=", ")
    w.add_argument("--tag_order", choices=("confidence", "model"), default="confidence")
    w.add_argument("--frequency_tags", action="store_true", help="print tag frequencies")
    w.add_argument("--cpu", action="store_true", help="use the CPU even when CUDA is available")

    b = sub.add_parser("blip", help="caption images with BLIP or BLIP-2 (transformers)")
    _common(b, ".txt", 1)
    b.add_argument("--model", default="Salesforce/blip-image-captioning-large", help="hub id or local folder")
    b.add_argument("--beam_search", action=B, default=True, help="beam search (else nucleus sampling)")
    b.add_argument("--num_beams", type=int, default=None)
    b.add_argument("--top_p", type=float, default=0.9)
    b.add_argument("--temperature", type=float, default=1.0)
    b.add_argument("--min_length", type=int, default=None, help="BLIP 5, BLIP-2 20 (new tokens)")
    b.add_argument("--max_length", type=int, default=None, help="BLIP 75, BLIP-2 40 (new tokens)")
    b.add_argument("--repetition_penalty", type=float, default=None)
    b.add_argument("--length_penalty", type=float, default=1.0)
    b.add_argument("--text_prompt", default="", help="conditional prompt, removed from the caption")
    b.add_argument("--prefix", default="")
    b.add_argument("--postfix", default="")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))

    gi = sub.add_parser("git", help="caption images with GIT (transformers), kohya's make_captions_by_git")
    _common(gi, ".caption", 1)
    gi.add_argument("--model_id", default="microsoft/git-large-textcaps", help="hub id or local folder")
    gi.add_argument("--max_length", type=int, default=50)
    gi.add_argument("--remove_words", action=B, default=True,
                    help="drop phrases quoting text read off the image (\"with the words ...\")")
    gi.add_argument("--prefix", default="")
    gi.add_argument("--postfix", default="")
    gi.add_argument("--device", default="auto")
    gi.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))

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
    handler = {"wd14": cmd_wd14, "blip": cmd_blip, "git": cmd_git, "prepare": cmd_prepare, "balance": cmd_balance,
               "group": cmd_group}
    try:
        return handler[a.command](a)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
