"""Checks that look at the disk, kept apart from value checks so the GUI can validate while typing."""
from __future__ import annotations

import os
import re
from pathlib import Path

from trainer.problems import Problem

from .base_weights import base_weights_path_problems
from .defaults import option

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_hub_id(value: str) -> bool:
    return bool(HUB_ID.match(value)) and not value.startswith((".", "/")) and value.count("/") == 1


def _model_problem(field: str, value: str) -> Problem | None:
    if not value or Path(value).expanduser().exists() or looks_like_hub_id(value):
        return None
    return Problem.at(field, f"{value!r} is neither an existing file/folder nor a Hugging Face id like "
                   "'org/name'; pick a checkpoint in models/checkpoints/ or fix the path")


def _writable_dir_problem(field: str, value: str) -> Problem | None:
    path = Path(value).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folder will be created under its nearest existing parent
    if probe.exists() and probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return None
    if probe.exists() and not probe.is_dir():
        return Problem.at(field, f"{str(probe)!r} is a file, not a folder; choose a folder for {field}")
    return Problem.at(field, f"{value!r} is not writable (no permission in {str(probe)!r}); choose a folder you "
                   "can write to")


def model_and_output_problems(c) -> list[Problem]:
    """The base model (and VAE) must exist or be a hub id, and the output folder must be chosen and
    writable: what `preflight` adds to the dataset checks (the CLI would otherwise train into the
    current folder)."""
    problems: list[Problem | None] = [
        _model_problem("pretrained_model_name_or_path", c.pretrained_model_name_or_path),
        _model_problem("vae", c.vae),
    ]
    if not c.pretrained_model_name_or_path:
        problems.append(Problem.at("pretrained_model_name_or_path", "no base model chosen; pick a checkpoint "
                                "file, a diffusers folder or a hub id"))
    if not c.output_dir:
        problems.append(Problem.at("output_dir", "no output folder chosen; pick where the trained files go, "
                                "e.g. outputs/mychar"))
    else:
        problems.append(_writable_dir_problem("output_dir", c.output_dir))
    return [p for p in problems if p is not None]


def check_paths(c) -> list[Problem]:
    """Problems with the files and folders a config names (nothing is created or changed)."""
    problems: list[Problem | None] = list(model_and_output_problems(c))
    if c.dataset_config:
        if not Path(c.dataset_config).is_file():
            problems.append(Problem.at("dataset_config", f"{c.dataset_config!r} does not exist; choose the dataset "
                                    "TOML or clear the field to use the image folder"))
    elif not c.train_data_dir and not option(c, "in_json"):
        problems.append(Problem.at("train_data_dir", "no image folder chosen; pick the parent of your "
                                "<repeats>_<name> folders, e.g. dataset/images"))
    elif c.train_data_dir and not Path(c.train_data_dir).is_dir():
        problems.append(Problem.at("train_data_dir", f"{c.train_data_dir!r} is not a folder; pick the parent of "
                                "your <repeats>_<name> folders, e.g. dataset/images"))
    if option(c, "reg_data_dir") and not Path(c.reg_data_dir).is_dir():
        problems.append(Problem.at("reg_data_dir", f"{c.reg_data_dir!r} is not a folder; fix it or clear the field"))
    masks = option(c, "conditioning_data_dir")
    if masks and not c.dataset_config and not Path(masks).is_dir():
        problems.append(Problem.at("conditioning_data_dir", f"{masks!r} is not a folder; choose the folder of mask "
                                   "images or clear the field"))
    if c.logging_dir:
        problems.append(_writable_dir_problem("logging_dir", c.logging_dir))
    for field in ("network_weights", "weights", "in_json"):
        value = option(c, field)
        if value and not Path(value).is_file() and not (field == "in_json"):
            problems.append(Problem.at(field, f"{value!r} does not exist; choose the file or clear the field"))
    problems += base_weights_path_problems(c)
    if c.resume and not Path(c.resume).is_dir():
        problems.append(Problem.at("resume", f"{c.resume!r} is not a saved state folder (NAME-000004-state); "
                                "choose one or clear the field"))
    return [p for p in problems if p is not None]
