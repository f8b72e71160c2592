"""Fine-tuning data from Kohya's metadata JSON, as the same ScanResult the folder scan produces.

``scan_metadata(cfg)`` reads ``in_json`` (or builds it from ``train_data_dir``'s caption files in the
output folder when ``in_json`` is empty), finds and checks every image, places it in a bucket with
the data pipeline's ``BucketManager`` and returns a ``trainer.data.ScanResult`` with one subset
repeated ``dataset_repeats`` times. ``TrainDataset``, the latent cache, the loader and preflight then
work on it unchanged, so batches look exactly like folder-based ones (latents|images, captions,
is_reg, loss_weights, bucket, paths, SDXL size conditioning).

Buckets are computed from the current resolution/bucket options, not read from
``train_resolution`` (sd-scripts v0.10 ignores it as well), so changed options never meet stale buckets.
"""
from __future__ import annotations

from pathlib import Path

from trainer.data.buckets import BucketManager
from trainer.data.errors import BadImage, DatasetError
from trainer.problems import Problem
from trainer.data.images import probe_image
from trainer.data.options import make_dataset_spec, make_subset, subset_values
from trainer.data.scan import ImageItem, ScanResult, ScannedDataset, ScannedSubset

from .base import KindError
from .finetune_metadata import caption_of, merge_captions_to_metadata, read_metadata, resolve_image, write_metadata

METADATA_NAME = "{name}_meta_cap.json"


def scan_metadata(cfg, *, in_json: str | Path | None = None, train_data_dir: str | Path | None = None,
                  strict: bool = True, write: bool = True) -> ScanResult:
    """strict=False (preflight, plan): every problem is reported instead of raised. write=False: with
    in_json empty the captions are merged in memory only (preflight must not write files)."""
    folder = Path(train_data_dir or cfg.train_data_dir)
    json_path = Path(in_json) if in_json else (Path(cfg.in_json) if cfg.in_json else None)
    try:
        if json_path is None and not write:
            extension = cfg.caption_extension or ".caption"  # empty: sd-scripts' fine-tuning extension
            metadata = merge_captions_to_metadata(folder, extension, None, recursive=cfg.recursive)
            json_path = folder / f"{extension} files"  # only names the source in reports
        else:
            json_path = json_path or ensure_metadata(cfg, folder)
            metadata = read_metadata(json_path)
    except KindError as exc:
        if strict:
            raise
        spec = make_dataset_spec([], cfg)
        problem = Problem("error", str(exc), "fix the metadata file or the caption files", str(json_path or folder))
        return ScanResult([ScannedDataset(spec, BucketManager(spec), [])], [], [problem])
    return _scan_entries(cfg, metadata, folder, json_path, strict)


def _scan_entries(cfg, metadata: dict, folder: Path, json_path: Path, strict: bool) -> ScanResult:
    problems: list[Problem] = []
    spec = make_dataset_spec([], cfg)
    values = dict(subset_values([], cfg), num_repeats=int(cfg.dataset_repeats))
    subset = make_subset(folder, values, is_reg=False, label=json_path.name)
    spec.subsets.append(subset)
    buckets = BucketManager(spec)
    scanned = ScannedSubset(subset)
    items: list[ImageItem] = []
    for key, entry in metadata.items():
        image = resolve_image(key, folder)
        if image is None:
            problems.append(Problem("skipped", f"metadata entry {key!r}: no image file found",
                                    f"put the image in {folder} or remove the entry from {json_path.name}",
                                    str(folder / key)))
            continue
        try:
            facts = probe_image(image)
            placement = buckets.place(*facts.size)
        except BadImage as exc:
            problems.append(Problem("skipped", exc.reason, exc.hint, str(image)))
            continue
        caption = caption_of(entry)
        if caption:
            scanned.captions_found += 1
        else:
            scanned.captions_missing += 1
            problems.append(Problem("warning", f"metadata entry {key!r} has neither caption nor tags: it trains "
                                    "with an empty caption", "add a caption file and build the metadata again",
                                    str(image)))
        scanned.items.append(len(items))
        items.append(ImageItem(image, facts, caption, "metadata" if caption else "none", placement, 0, 0, False))
    if not items:
        problems.append(Problem("error", f"{json_path} names no usable image",
                                f"check that its keys are image names in {folder} (without extension) or "
                                "absolute paths", str(json_path)))
    result = ScanResult([ScannedDataset(spec, buckets, [scanned])], items, problems)
    if strict and result.of("error"):
        raise DatasetError(result.of("error"))
    return result


def ensure_metadata(cfg, folder: Path) -> Path:
    """in_json empty: merge the caption files into <output_dir>/<output_name>_meta_cap.json.

    An existing file with the same content is reused; one with other content (the user's, or an older
    dataset) is kept and the next free numbered name is used instead.
    """
    out_dir = Path(cfg.output_dir or folder)
    name = cfg.output_name or "last"  # empty: the name sd-scripts gives an unnamed run
    extension = cfg.caption_extension or ".caption"  # empty: sd-scripts' fine-tuning extension
    metadata = merge_captions_to_metadata(folder, extension, None, recursive=bool(cfg.recursive))
    target = out_dir / METADATA_NAME.format(name=name)
    n = 1
    while target.exists():
        try:
            if read_metadata(target) == metadata:
                return target
        except Exception:
            pass
        target = out_dir / METADATA_NAME.format(name=f"{name}-{n}")
        n += 1
    return write_metadata(metadata, target)


def build_bucket_metadata(train_data_dir, in_json, out_json, cfg, *, vae=None, on_progress=None) -> dict:
    """Add image_size and train_resolution (the bucket) to every entry (prepare_buckets_latents.py);
    with ``vae``, also cache the latents to disk (the same cache training reuses)."""
    in_json, out_json = Path(in_json), Path(out_json)
    metadata = read_metadata(in_json)
    scan = scan_metadata(cfg, in_json=in_json, train_data_dir=train_data_dir, strict=True)
    by_path = {str(item.path): item for item in scan.items}
    for key, entry in metadata.items():
        image = resolve_image(key, Path(train_data_dir))
        item = by_path.get(str(image)) if image is not None else None
        if item is None:
            continue
        entry["image_size"] = list(item.facts.size)
        entry["train_resolution"] = list(item.placement.bucket)
    if vae is not None:
        from trainer.data.latent_cache import LatentCache

        cache = LatentCache(vae, to_disk=True, cache_dir=cfg.latent_cache_dir,
                            batch_size=int(cfg.vae_batch_size), on_progress=on_progress)
        flip, masked = bool(cfg.flip_aug), bool(cfg.alpha_mask)
        cache.prepare(scan.items, lambda item: flip, lambda item: masked)
    write_metadata(metadata, out_json, protect=in_json)
    return metadata
