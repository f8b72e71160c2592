"""Scanning the dataset: N_name concept folders (or a dataset TOML) -> checked images with captions
and bucket placements, plus every problem found on the way."""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from trainer.config.defaults import option

from .buckets import BucketManager, Placement
from .captions import caption_path, read_caption
from .dataset_toml import load_dataset_config
from trainer.problems import Problem

from .errors import EXPECTED_LAYOUT, BadImage, DatasetError
from .images import IMAGE_EXTENSIONS, ImageFacts, ignored_entries, list_images, probe_image
from .options import DatasetSpec, SubsetSpec, make_dataset_spec, make_subset, subset_values

CONCEPT_FOLDER = re.compile(r"^(\d+)_(.*)$")
CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class ImageItem:
    path: Path
    facts: ImageFacts
    caption: str  # the raw caption: the file's first line, or the folder's class tokens
    caption_source: str  # "file" | "class_tokens" | "none"
    placement: Placement
    dataset: int
    subset: int
    is_reg: bool
    mask_path: Path | None = None  # its mask image, when its subset has a mask folder (conditioning_data_dir)
    mask_facts: ImageFacts | None = None
    resize_interpolation: str = ""  # its subset's (the latent cache renders items without their subset)


@dataclass
class ScannedSubset:
    spec: SubsetSpec
    items: list[int] = field(default_factory=list)  # indices into ScanResult.items
    captions_found: int = 0
    captions_missing: int = 0
    held_out: int = 0  # its images set aside for the validation loss (trainer/data/holdout.py)

    @property
    def samples(self) -> int:
        return len(self.items) * self.spec.num_repeats


@dataclass
class ScannedDataset:
    spec: DatasetSpec
    buckets: BucketManager | None  # None when the bucket settings are invalid (see problems)
    subsets: list[ScannedSubset] = field(default_factory=list)


@dataclass
class ScanResult:
    datasets: list[ScannedDataset]
    items: list[ImageItem]
    problems: list[Problem]
    validation: "ScanResult | None" = None  # the held-out images (validation_split), same datasets/subsets

    def of(self, level: str) -> list[Problem]:
        return [p for p in self.problems if p.level == level]


def scan_dataset(cfg, *, strict: bool = True, max_workers: int | None = None) -> ScanResult:
    """Read every concept folder the config names. strict: raise DatasetError on fatal problems
    (preflight passes strict=False to report them all instead)."""
    problems: list[Problem] = []
    specs = dataset_specs(cfg, problems)
    datasets: list[ScannedDataset] = []
    items: list[ImageItem] = []
    for d_index, spec in enumerate(specs):
        found = bucket_problems(spec)
        problems.extend(found)
        if found:  # kept (empty) so dataset indices stay aligned with the config's [[datasets]]
            datasets.append(ScannedDataset(spec, None))
            continue
        scanned = ScannedDataset(spec, BucketManager(spec))
        for s_index, subset in enumerate(spec.subsets):
            scanned.subsets.append(_scan_subset(subset, scanned.buckets, d_index, s_index, items, problems,
                                                max_workers))
        datasets.append(scanned)
    problems.extend(mask_problems(specs, cfg))
    problems.extend(unused_mask_problems(datasets, items))
    if not any(not item.is_reg for item in items):
        if not any(p.level == "error" for p in problems):
            problems.append(Problem("error", "no usable training image was found",
                                    "add .png/.jpg/.jpeg/.webp/.bmp images to the concept folders\n"
                                    + EXPECTED_LAYOUT, str(cfg.train_data_dir)))
    from .holdout import split_validation  # (it builds on this module's types)

    result = split_validation(ScanResult(datasets, items, problems), int(cfg.seed))
    if strict and result.of("error"):
        raise DatasetError(result.of("error"))
    return result


def mask_problems(specs: list[DatasetSpec], cfg) -> list[Problem]:
    """A subset with two mask sources, and masked_loss with a dataset TOML none of whose subsets has a mask
    (without a TOML the config's own rules say so)."""
    subsets = [subset for spec in specs for subset in spec.subsets]
    out = [Problem("error", f"{s.label!r} has both alpha_mask and conditioning_data_dir, two sources of the same "
                   "loss mask", "use one: set alpha_mask = false for this subset (or untick alpha_mask) to use the "
                   "mask folder, or remove its conditioning_data_dir to use the transparency", str(s.image_dir),
                   "conditioning_data_dir")
           for s in subsets if s.alpha_mask and s.conditioning_data_dir is not None and cfg.dataset_config]
    # (without a TOML the config rule _masked_loss says so once)
    if option(cfg, "masked_loss") and cfg.dataset_config and not any(s.masked for s in subsets):
        out.append(Problem("error", "masked_loss is on but no subset of the dataset config has alpha_mask or "
                           "conditioning_data_dir, so no image has a mask", "set alpha_mask = true (the images' "
                           "transparency) or conditioning_data_dir = \"path/to/masks\" (mask images named like the "
                           "images) in the [[datasets.subsets]] to train masked, or untick masked_loss",
                           str(cfg.dataset_config), "masked_loss"))
    return out


def unused_mask_problems(datasets: list[ScannedDataset], items: list[ImageItem]) -> list[Problem]:
    """Mask images that no training image uses: most often a misnamed mask (sd-scripts warns too)."""
    used = {item.mask_path for item in items if item.mask_path is not None}
    folders = {(s.spec.conditioning_data_dir, s.spec.recursive) for ds in datasets for s in ds.subsets
               if s.spec.conditioning_data_dir is not None and s.spec.conditioning_data_dir.is_dir()}
    out = []
    for folder, recursive in sorted(folders, key=str):
        unused = [p for p in list_images(folder, recursive) if p not in used]
        if unused:
            names = ", ".join(p.name for p in unused[:5]) + (", ..." if len(unused) > 5 else "")
            out.append(Problem("warning", f"{len(unused)} mask images match no training image ({names})",
                               "name each mask like its image (same name, any image extension) or move it away",
                               str(folder), "conditioning_data_dir"))
    return out


def bucket_problems(spec: DatasetSpec) -> list[Problem]:
    """Kohya's assertions on bucket limits, as messages with the fix."""
    w, h = spec.resolution
    out = []
    if w < 8 or h < 8:
        out.append(Problem("error", f"resolution {w},{h} is too small", 'use e.g. "512" or "1024"',
                           field="resolution"))
    if spec.enable_bucket and not spec.bucket_no_upscale:
        step = spec.bucket_reso_steps
        if step < 8 or step % 8:
            out.append(Problem("error", f"bucket_reso_steps {step} must be a positive multiple of 8",
                               "use 64 (or 32 for SDXL)", field="bucket_reso_steps"))
        if spec.min_bucket_reso > min(w, h):
            out.append(Problem("error", f"min_bucket_reso {spec.min_bucket_reso} is above the resolution's smaller "
                               f"side {min(w, h)}", f"lower min_bucket_reso to {min(w, h)} or less",
                               field="min_bucket_reso"))
        if spec.max_bucket_reso < max(w, h):
            out.append(Problem("error", f"max_bucket_reso {spec.max_bucket_reso} is below the resolution's larger "
                               f"side {max(w, h)}", f"raise max_bucket_reso to {max(w, h)} or more",
                               field="max_bucket_reso"))
    return out


def dataset_specs(cfg, problems: list[Problem]) -> list[DatasetSpec]:
    config_file = cfg.dataset_config
    if config_file:
        specs, found = load_dataset_config(config_file, cfg)
        problems.extend(found)
        return specs
    spec = make_dataset_spec([], cfg)
    values = subset_values([], cfg)
    train_dir = cfg.train_data_dir
    if not train_dir:
        problems.append(Problem("error", "train_data_dir is not set",
                                "choose the parent folder of your concept folders\n" + EXPECTED_LAYOUT,
                                field="train_data_dir"))
        return [spec]
    skip = _folders_to_skip(cfg)
    train = concept_folders(Path(train_dir), values, False, "train_data_dir", problems, skip)
    masks = option(cfg, "conditioning_data_dir")
    for subset in train if masks else ():
        subset.conditioning_data_dir = mask_folder(Path(masks), subset.image_dir)
    spec.subsets += train
    reg_dir = option(cfg, "reg_data_dir")
    if reg_dir:
        spec.subsets += concept_folders(Path(reg_dir), values, True, "reg_data_dir", problems, skip)
    return [spec]


def mask_folder(masks: Path, concept: Path) -> Path:
    """Where a concept folder's masks are: the mask folder's sub-folder of the same name (10_mychar/), or the mask
    folder itself when it has none (one flat folder of masks)."""
    mirrored = masks / concept.name
    return mirrored if mirrored.is_dir() else masks


def _folders_to_skip(cfg) -> set[Path]:
    """Folders inside train_data_dir that are not concept folders: the latent cache and the mask folder."""
    return {Path(p).resolve() for p in (cfg.latent_cache_dir, option(cfg, "conditioning_data_dir")) if p}


def concept_folders(parent: Path, values: dict, is_reg: bool, field_name: str, problems: list[Problem],
                    skip: set[Path] = frozenset()) -> list[SubsetSpec]:
    """Kohya's N_name rule: N repeats (>= 1), the rest of the name is the class/instance tokens."""
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a folder"
        problems.append(Problem("error", f"{field_name} {what}", "choose the parent folder of your concept "
                                "folders\n" + EXPECTED_LAYOUT, str(parent), field_name))
        return []
    subsets, loose = [], []
    for entry in sorted(parent.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.resolve() in skip:
            continue
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_EXTENSIONS:
                loose.append(entry)
            continue
        match = CONCEPT_FOLDER.match(entry.name)
        if not match:
            problems.append(Problem("error", f"folder {entry.name!r} in {field_name} has no <repeats>_ prefix",
                                    f"rename it to e.g. 1_{entry.name} (1 repeat)\n" + EXPECTED_LAYOUT,
                                    str(entry), field_name))
            continue
        repeats, name = int(match.group(1)), match.group(2)
        if repeats < 1:
            problems.append(Problem("error", f"folder {entry.name!r} has 0 repeats, so it would never be used",
                                    f"rename it to 1_{name} or more repeats\n" + EXPECTED_LAYOUT, str(entry),
                                    field_name))
            continue
        folder_values = dict(values, num_repeats=repeats, class_tokens=name)
        subsets.append(make_subset(entry, folder_values, is_reg=is_reg, label=entry.name))
    if loose and not subsets:
        problems.append(Problem("error", f"{field_name} holds {len(loose)} images directly instead of concept "
                                "folders", f"move them into a folder such as {parent / '1_character_name'} and "
                                "keep pointing at the parent\n" + EXPECTED_LAYOUT, str(parent), field_name))
    elif loose:
        problems.append(Problem("warning", f"{len(loose)} images directly in {field_name} are not used",
                                "move them into one of the <repeats>_<name> folders", str(parent), field_name))
    elif not subsets and not any(p.level == "error" and p.path.startswith(str(parent)) for p in problems):
        problems.append(Problem("error", f"{field_name} has no <repeats>_<name> folders",
                                "create one and put the images inside\n" + EXPECTED_LAYOUT, str(parent),
                                field_name))
    return subsets


def _scan_subset(subset: SubsetSpec, buckets: BucketManager, d_index: int, s_index: int,
                 items: list[ImageItem], problems: list[Problem], max_workers: int | None) -> ScannedSubset:
    scanned = ScannedSubset(subset)
    if not subset.image_dir.is_dir():
        problems.append(Problem("error", "image folder does not exist", "fix the path", str(subset.image_dir)))
        return scanned
    for path, why, hint in ignored_entries(subset.image_dir, subset.recursive):
        problems.append(Problem("skipped", f"ignored: {why}", hint, str(path)))
    paths = list_images(subset.image_dir, subset.recursive)
    if not paths:
        problems.append(Problem("warning", f"concept folder {subset.label!r} holds no images",
                                "add images or remove the folder", str(subset.image_dir)))
        return scanned
    workers = max_workers or min(8, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
        results = list(pool.map(_probe, paths))
        masks = _match_masks(subset, paths, problems, pool) if subset.conditioning_data_dir is not None else {}
    for path, result in zip(paths, results):
        if isinstance(result, BadImage):
            problems.append(Problem("skipped", result.reason, result.hint, str(path)))
            continue
        mask_path, mask_facts = masks.get(path, (None, None))
        if subset.conditioning_data_dir is not None and not _mask_fits(path, result, mask_path, mask_facts,
                                                                       subset, problems):
            continue
        try:
            placement = buckets.place(*result.size)
        except BadImage as exc:
            problems.append(Problem("skipped", exc.reason, exc.hint, str(path)))
            continue
        if result.misnamed:
            problems.append(Problem("warning", *result.misnamed, str(path)))
        caption, source = _caption_for(path, subset, problems)
        if source == "file":
            scanned.captions_found += 1
        else:
            scanned.captions_missing += 1
        scanned.items.append(len(items))
        items.append(ImageItem(path, result, caption, source, placement, d_index, s_index, subset.is_reg,
                               mask_path, mask_facts, subset.resize_interpolation))
    _caption_extension_hint(subset, scanned, paths, problems)
    return scanned


def _match_masks(subset: SubsetSpec, paths: list[Path], problems: list[Problem],
                 pool: ThreadPoolExecutor) -> dict[Path, tuple[Path, ImageFacts | BadImage]]:
    """Each image's mask: the file in the mask folder with the image's name (its path below image_dir when
    recursive) and any image extension, probed like the images."""
    folder = subset.conditioning_data_dir
    if not folder.is_dir():
        problems.append(Problem("error", "mask folder (conditioning_data_dir) does not exist", "fix the path",
                                str(folder), "conditioning_data_dir"))
        return {}
    by_stem: dict[Path, list[Path]] = {}
    for mask in list_images(folder, subset.recursive):
        by_stem.setdefault(mask.relative_to(folder).with_suffix(""), []).append(mask)
    found = {}
    for path in paths:
        candidates = by_stem.get(path.relative_to(subset.image_dir).with_suffix(""), [])
        if len(candidates) > 1:
            problems.append(Problem("warning", f"{len(candidates)} mask images for {path.name}: "
                                    f"{', '.join(c.name for c in candidates)}; {candidates[0].name} is used",
                                    "keep one mask per image", str(folder), "conditioning_data_dir"))
        if candidates:
            found[path] = candidates[0]
    unique = list(dict.fromkeys(found.values()))  # images named alike in one folder (a.png, a.jpg) share a mask
    probed = dict(zip(unique, pool.map(_probe, unique)))
    return {path: (mask, probed[mask]) for path, mask in found.items()}


def _mask_fits(path: Path, facts: ImageFacts, mask_path: Path | None, mask_facts, subset: SubsetSpec,
               problems: list[Problem]) -> bool:
    """An image of a subset with a mask folder trains only with a readable mask of its shape. A missing mask is an
    error, not an all-ones mask: the image would silently teach what the masks hide elsewhere (sd-scripts refuses
    too)."""
    folder = subset.conditioning_data_dir
    if not folder.is_dir():
        return False  # said once by _match_masks
    if mask_path is None:
        stem = path.relative_to(subset.image_dir).with_suffix("")
        problems.append(Problem("error", f"no mask image for {path.name} in {folder}",
                                f"add {stem}.png (any image extension) to {folder}: white where the model learns, "
                                "black where it does not; or move the image out of the concept folder",
                                str(path), "conditioning_data_dir"))
        return False
    if isinstance(mask_facts, BadImage):
        problems.append(Problem("error", f"mask image of {path.name}: {mask_facts.reason}", mask_facts.hint,
                                str(mask_path), "conditioning_data_dir"))
        return False
    (w, h), (mw, mh) = facts.size, mask_facts.size
    if abs(w * mh - h * mw) > max(w, h, mw, mh):  # more than a pixel of rounding: not this image's mask
        problems.append(Problem("error", f"mask image {mask_path.name} is {mw}x{mh} but {path.name} is {w}x{h}",
                                "save the mask at the image's size (or the same shape: it is stretched to the image)",
                                str(mask_path), "conditioning_data_dir"))
        return False
    return True


def _probe(path: Path):
    try:
        return probe_image(path)
    except BadImage as exc:
        return exc


def _caption_for(path: Path, subset: SubsetSpec, problems: list[Problem]) -> tuple[str, str]:
    cap = caption_path(path, subset.caption_extension)
    if cap.is_file():
        try:
            text, warning = read_caption(cap, all_lines=subset.caption.enable_wildcard)
        except OSError as exc:
            problems.append(Problem("warning", f"caption cannot be read ({exc}); class tokens used instead",
                                    "check the file's permissions", str(cap)))
            text, warning = "", None
        if warning:
            problems.append(Problem("warning", f"caption {warning}", "", str(cap)))
        if text:
            return text, "file"
        problems.append(Problem("warning", "caption file is empty; the folder's class tokens are used",
                                "write a caption or delete the empty file", str(cap)))
    if subset.class_tokens:
        return subset.class_tokens, "class_tokens"
    return "", "none"


def _caption_extension_hint(subset: SubsetSpec, scanned: ScannedSubset, paths: list[Path],
                            problems: list[Problem]) -> None:
    """Kohya's most common silent trap: captions written as .caption while the option says .txt (or back)."""
    if scanned.captions_found:
        return
    for ext in CAPTION_EXTENSIONS:
        if ext != subset.caption_extension and any(caption_path(p, ext).is_file() for p in paths):
            problems.append(Problem("warning", f"no {subset.caption_extension} captions in {subset.label!r} but "
                                    f"{ext} files are there, so they are not used",
                                    f"set caption_extension to {ext}", str(subset.image_dir), "caption_extension"))
            return
    if not subset.class_tokens:
        problems.append(Problem("warning", f"images in {subset.label!r} have neither captions nor class tokens: "
                                "they train with an empty caption", "add caption files or name the folder "
                                "N_<tokens>", str(subset.image_dir)))


def cache_problems(scan: ScanResult) -> list[Problem]:
    """Augmentations that change the image every step cannot work from a latent cache (Kohya asserts)."""
    problems = []
    for ds in scan.datasets:
        for subset in ds.subsets:
            for name in ("color_aug", "random_crop", "face_crop_aug_range"):
                if getattr(subset.spec, name):
                    problems.append(Problem("error", f"{name} is on for {subset.spec.label!r} but latents are "
                                            "cached, so the augmentation could never change the cached latent",
                                            f"turn off {name} or turn off cache_latents", str(subset.spec.image_dir),
                                            name))
    return problems


def text_cache_problems(scan: ScanResult) -> list[Problem]:
    """Cached text-encoder outputs need captions that never change (no shuffle, caption dropout, wildcards or token
    warm-up)."""
    return [Problem("error", f"captions change between steps in {subset.spec.label!r} (shuffle_caption, caption "
                    "dropout, enable_wildcard or token_warmup_step), so text-encoder outputs cannot be cached",
                    "turn those options off for it or untick cache_text_encoder_outputs", str(subset.spec.image_dir),
                    "cache_text_encoder_outputs")
            for ds in scan.datasets for subset in ds.subsets if not subset.spec.caption.is_fixed]
