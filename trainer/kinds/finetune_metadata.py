"""Kohya's fine-tuning metadata JSON (sd-scripts finetune/*.py, §5.3), built from an image folder.

    {"<image key>": {"caption": "...", "tags": "tag1, tag2", "image_size": [w, h],
                     "train_resolution": [bw, bh]}}

The key is the image path relative to ``train_data_dir`` without its extension ("img001", or
"sub/img001" for sub-folders with ``recursive``), or the absolute path with ``full_path`` — the
keys sd-scripts' FineTuningDataset resolves. Steps, as in Kohya's tools:

    merge_captions_to_metadata(dir, ".caption", "meta_cap.json")        # BLIP captions
    merge_tags_to_metadata(dir, "meta_cap.json", "meta_cap_dd.json")    # WD14 tags (.txt)
    build_bucket_metadata(dir, "meta_cap_dd.json", "meta_lat.json", cfg, vae=...)  # finetune_dataset.py

Every function writes atomically and refuses to overwrite its input file. This module is the file
format only (no scan): finetune_dataset.py reads it, and adds the bucket step, which needs the scan.
Command line: ``python -m trainer.kinds.finetune_metadata captions|tags ...`` (see --help).
"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.atomic import atomic_write_text
from trainer.data.images import IMAGE_EXTENSIONS

from .base import KindError


def image_files(train_data_dir: Path, recursive: bool = False) -> list[Path]:
    folder = Path(train_data_dir)
    if not folder.is_dir():
        raise KindError(f"train_data_dir {folder} is not a folder; choose the folder that holds the images")
    walker = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in walker if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: str(p))


def image_key(path: Path, train_data_dir: Path, full_path: bool = False) -> str:
    if full_path:
        return str(Path(path).resolve())
    return Path(path).relative_to(train_data_dir).with_suffix("").as_posix()


def read_metadata(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise KindError(f"metadata file {path} does not exist; build it first (merge captions) or clear in_json")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise KindError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix it or "
                        "build it again") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise KindError(f"{path} is not a Kohya metadata file: expected {{\"image key\": {{\"caption\": ...}}}}")
    return data


def write_metadata(metadata: dict, out_json: Path, *, protect: Path | None = None) -> Path:
    """Atomic write; ``protect`` (the input file) is never overwritten."""
    out_json = Path(out_json)
    if protect is not None and Path(protect).exists() and out_json.resolve() == Path(protect).resolve():
        raise KindError(f"{out_json} is also the input file; write the result to a new file name")
    return atomic_write_text(out_json, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")


def _merge_text_files(train_data_dir, extension: str, field: str, in_json, out_json, full_path: bool,
                      recursive: bool) -> dict:
    from trainer.data.captions import read_caption

    folder = Path(train_data_dir)
    extension = extension if extension.startswith(".") else "." + extension
    metadata = read_metadata(Path(in_json)) if in_json else {}
    images = image_files(folder, recursive)
    if not images:
        raise KindError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    seen: dict[str, Path] = {}
    found = 0
    for image in images:
        key = image_key(image, folder, full_path)
        if key in seen:
            raise KindError(f"{image.name} and {seen[key].name} have the same name apart from the extension; "
                            "rename one so each image has its own caption")
        seen[key] = image
        text_file = image.with_name(image.stem + extension)
        if not text_file.is_file():
            continue
        text, _ = read_caption(text_file)
        metadata.setdefault(key, {})[field] = text
        found += 1
    if found == 0:
        raise KindError(f"no {extension} files next to the images in {folder}; set caption_extension to the "
                        "extension your captions use (.txt or .caption)")
    if out_json:
        write_metadata(metadata, Path(out_json), protect=Path(in_json) if in_json else None)
    return metadata


def merge_captions_to_metadata(train_data_dir, caption_extension: str = ".caption", out_json=None, *,
                               in_json=None, full_path: bool = False, recursive: bool = False) -> dict:
    """Each image's caption file -> metadata[key]["caption"] (sd-scripts merge_captions_to_metadata.py)."""
    return _merge_text_files(train_data_dir, caption_extension, "caption", in_json, out_json, full_path, recursive)


def merge_tags_to_metadata(train_data_dir, in_json=None, out_json=None, *, tags_extension: str = ".txt",
                           full_path: bool = False, recursive: bool = False) -> dict:
    """Each image's tag file (WD14) -> metadata[key]["tags"] (sd-scripts merge_dd_tags_to_metadata.py)."""
    return _merge_text_files(train_data_dir, tags_extension, "tags", in_json, out_json, full_path, recursive)


def caption_of(entry: dict) -> str:
    """The training caption: caption and tags joined as FineTuningDataset does ("caption, tags")."""
    caption = (entry.get("caption") or "").strip()
    tags = (entry.get("tags") or "").strip()
    if caption and tags:
        return f"{caption}, {tags}"
    return caption or tags


def resolve_image(key: str, train_data_dir: Path) -> Path | None:
    """The image file of a metadata key (absolute path, or relative to train_data_dir, any extension)."""
    candidate = Path(key)
    if candidate.is_absolute() and candidate.is_file():
        return candidate
    base = candidate if candidate.is_absolute() else Path(train_data_dir) / key
    if base.suffix.lower() in IMAGE_EXTENSIONS and base.is_file():
        return base
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        path = base.with_name(base.name + ext)
        if path.is_file():
            return path
    return None


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.kinds.finetune_metadata",
                                     description="Build Kohya's fine-tuning metadata JSON from an image folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("captions", help="merge caption files into a metadata JSON")
    cap.add_argument("train_data_dir")
    cap.add_argument("out_json")
    cap.add_argument("--in_json", default=None)
    cap.add_argument("--caption_extension", default=".caption")
    tag = sub.add_parser("tags", help="merge tag files (WD14) into a metadata JSON")
    tag.add_argument("train_data_dir")
    tag.add_argument("out_json")
    tag.add_argument("--in_json", default=None)
    tag.add_argument("--tags_extension", default=".txt")
    for p in (cap, tag):
        p.add_argument("--full_path", action="store_true")
        p.add_argument("--recursive", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "captions":
            meta = merge_captions_to_metadata(args.train_data_dir, args.caption_extension, args.out_json,
                                              in_json=args.in_json, full_path=args.full_path,
                                              recursive=args.recursive)
        else:
            meta = merge_tags_to_metadata(args.train_data_dir, args.in_json, args.out_json,
                                          tags_extension=args.tags_extension, full_path=args.full_path,
                                          recursive=args.recursive)
    except KindError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    print(f"wrote {args.out_json}: {len(meta)} images", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
