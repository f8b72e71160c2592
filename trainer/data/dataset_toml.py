"""Kohya's dataset config file ([general], [[datasets]], [[datasets.subsets]]) -> DatasetSpecs.

Differences from sd-scripts, on purpose: a relative image_dir is taken relative to the TOML file
(not to whatever folder the trainer was started from), and unknown keys name the closest valid key.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path

from trainer.problems import Problem

from .errors import DatasetError
from .options import (DATASET_OPTIONS, SUBSET_KEYS as SUBSET_OPTION_KEYS, DatasetSpec, make_dataset_spec, make_subset,
                      subset_values)

SUBSET_KEYS = set(SUBSET_OPTION_KEYS) | {"image_dir", "is_reg", "conditioning_data_dir"}
DATASET_KEYS = set(DATASET_OPTIONS)
# Kohya keys we read without acting on them: a warning says so instead of a schema error.
IGNORED_KEYS = {"enable_wildcard", "cache_info", "custom_attributes", "network_multiplier"}
ALIASES = {"caption_extention": "caption_extension"}  # Kohya keeps its old misspelling working


def read_toml_or_json(path: Path) -> dict:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    from trainer import tomlio

    return tomlio.loads(text)


def load_dataset_config(path: str | Path, cfg) -> tuple[list[DatasetSpec], list[Problem]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError([_problem("error", f"dataset_config {path} does not exist",
                                    "choose an existing .toml file or clear dataset_config", str(path))])
    try:
        doc = read_toml_or_json(path)
    except Exception as exc:  # tomllib/json errors carry the line and column
        raise DatasetError([_problem("error", f"dataset_config cannot be parsed: {exc}",
                                    "fix the TOML syntax at the line shown", str(path))]) from exc
    problems: list[Problem] = []
    general = _clean(doc.get("general", {}), SUBSET_KEYS | DATASET_KEYS, "[general]", path, problems)
    for key in set(doc) - {"general", "datasets"}:
        problems.append(_unknown(key, {"general", "datasets"}, "top level", path))
    problems.extend(_not_per_subset(general, "[general]", path))
    datasets: list[DatasetSpec] = []
    for d_index, raw_dataset in enumerate(doc.get("datasets", [])):
        where = f"[[datasets]] #{d_index + 1}"
        dataset = _clean(raw_dataset, SUBSET_KEYS | DATASET_KEYS | {"subsets"}, where, path, problems)
        spec = make_dataset_spec([dataset, general], cfg)
        problems.extend(_not_per_subset(dataset, where, path))
        seen: set[Path] = set()
        for s_index, raw_subset in enumerate(dataset.get("subsets", [])):
            s_where = f"{where} subset #{s_index + 1}"
            subset = _clean(raw_subset, SUBSET_KEYS | DATASET_KEYS, s_where, path, problems)
            if "metadata_file" in raw_subset:
                continue  # reported by _clean as unsupported
            if not subset.get("image_dir"):
                problems.append(_problem("error", f"{s_where} has no image_dir",
                                        'add image_dir = "path/to/images"', str(path)))
                continue
            image_dir = _beside(path, subset["image_dir"])
            if image_dir.resolve() in seen:
                problems.append(_problem("warning", f"{s_where} repeats image_dir {image_dir}; ignored as Kohya does",
                                        "remove the duplicate subset", str(path)))
                continue
            seen.add(image_dir.resolve())
            values = subset_values([subset, dataset, general], cfg)
            made = make_subset(image_dir, values, is_reg=bool(subset.get("is_reg", False)), label=image_dir.name)
            if subset.get("conditioning_data_dir"):  # a subset's own key, like image_dir (sd-scripts' mask folder)
                made.conditioning_data_dir = _beside(path, subset["conditioning_data_dir"])
            spec.subsets.append(made)
        if not spec.subsets:
            problems.append(_problem("error", f"{where} has no usable [[datasets.subsets]]",
                                    "add at least one subset with image_dir", str(path)))
        datasets.append(spec)
    if not datasets:
        problems.append(_problem("error", "dataset_config has no [[datasets]]",
                                'add [[datasets]] with [[datasets.subsets]] image_dir = "..."', str(path)))
    return datasets, problems


def _not_per_subset(layer: dict, where: str, path: Path) -> list[Problem]:
    if not layer.get("conditioning_data_dir"):
        return []
    return [_problem("warning", f"{where}: conditioning_data_dir is read per subset only, so it is not used here",
                     "move it into each [[datasets.subsets]] that has masks", str(path))]


def _beside(config_file: Path, folder: str) -> Path:
    """A folder the TOML names; a relative one is taken relative to the TOML file."""
    folder = Path(folder).expanduser()
    return folder if folder.is_absolute() else config_file.parent / folder


def _clean(table: dict, allowed: set[str], where: str, path: Path, problems: list[Problem]) -> dict:
    if not isinstance(table, dict):
        problems.append(_problem("error", f"{where} must be a table", "see docs/dataset.md", str(path)))
        return {}
    out = {}
    for key, value in table.items():
        key = ALIASES.get(key, key)
        if key in allowed:
            out[key] = value
        elif key == "metadata_file":
            problems.append(_problem("error", f"{where}: metadata_file (fine-tuning metadata JSON) subsets are "
                                    "not supported in dataset_config", "use image_dir with caption files",
                                    str(path), "dataset_config"))
        elif key in IGNORED_KEYS:
            problems.append(_problem("warning", f"{where}: {key} is not supported here and is ignored",
                                    f"remove {key}", str(path)))
        else:
            problems.append(_unknown(key, allowed, where, path))
    return out


def _unknown(key: str, allowed: set[str], where: str, path: Path) -> Problem:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f"did you mean {close[0]}?" if close else "remove it (see docs/dataset.md for the keys)"
    return _problem("error", f"{where}: unknown key {key!r}", hint, str(path))


def _problem(level: str, message: str, hint: str, path: str) -> Problem:
    return Problem(level, message, hint, path, field="dataset_config")
