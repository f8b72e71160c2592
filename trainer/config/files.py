"""Config files: the project's JSON/TOML (versioned, migrated) and Kohya_ss GUI JSON on the fly."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trainer import tomlio
from trainer.atomic import atomic_write_text

from .kohya_import import detect_training_type, import_kohya_json
from trainer.problems import Problem

from .rules import ConfigError, parse_config
from .types import CONFIG_VERSION, CONFIG_TYPES, BaseConfig


def _v0_to_v1(data: dict) -> dict:
    """Version 0: early drafts without config_version that still used Kohya's `max_resolution`."""
    if "max_resolution" in data and "resolution" not in data:
        data["resolution"] = data.pop("max_resolution")
    return data


# version N → function turning a version-N dict into version N+1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _v0_to_v1}


def migrate(data: dict, source: str = "") -> dict:
    version = data.get("config_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError([Problem.at("config_version", f"{version!r} is not a config version (a whole number from 0 "
                                   f"to {CONFIG_VERSION}); remove the key or set it to {CONFIG_VERSION}")], source)
    if version > CONFIG_VERSION:
        raise ConfigError([Problem.at("config_version", f"version {version!r} is newer than this program "
                                   f"understands ({CONFIG_VERSION}); update kohya-studio")], source)
    while version < CONFIG_VERSION:
        data = MIGRATIONS[version](dict(data))
        version += 1
    data["config_version"] = CONFIG_VERSION
    return data


@dataclass
class LoadedConfig:
    config: BaseConfig
    source_format: str  # "project-json", "project-toml", "kohya-json"
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_config_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem.at("config", f"{str(path)!r} does not exist; check the path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem.at("config", f"{path.name} cannot be read: {exc}")], str(path)) from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        data = tomlio.loads(text) if kind == "TOML" else json.loads(text)
    except (json.JSONDecodeError, tomlio.TOMLDecodeError) as exc:
        raise ConfigError([Problem.at("config", f"{path.name} is not valid {kind}: {exc}")], str(path)) from None
    except RecursionError:
        raise ConfigError([Problem.at("config", f"{path.name} is nested too deeply to be a config; a config is one "
                                   "table of settings")], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem.at("config", f"{path.name} holds {_what(data)} at the top; a config is one "
                                   f"{'table' if kind == 'TOML' else 'object {…}'} of settings")], str(path))
    return data


def _what(value) -> str:
    return {type(None): "null", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), f"a {type(value).__name__}")


def config_from_dict(data: dict[str, Any], training_type: str | None = None, source: str = "") -> LoadedConfig:
    """Accept a project dict (has training_type/config_version) or a Kohya_ss GUI dict."""
    is_project = "config_version" in data or "training_type" in data
    if is_project:
        data = migrate(dict(data), source)
        ttype = data.get("training_type") or training_type
        if training_type and ttype != training_type:
            raise ConfigError([Problem.at("training_type", f"the file is a {ttype} config but {training_type} was "
                                       "asked for; open it in its own tab or change --type")], source)
        if ttype not in CONFIG_TYPES:
            raise ConfigError([Problem.at("training_type", f"{ttype!r} is not one of {', '.join(CONFIG_TYPES)}")],
                              source)
        return LoadedConfig(parse_config(ttype, data, source), "project")
    ttype = training_type or detect_training_type(data)
    if ttype is None:
        raise ConfigError([Problem.at("training_type", "cannot tell which kind of training this Kohya_ss config "
                                   "is for; pass --type lora|dreambooth|textual_inversion|finetune")], source)
    values, ignored, notes = import_kohya_json(data, ttype)
    return LoadedConfig(parse_config(ttype, values, source), "kohya-json", ignored, notes)


def load_config_file(path: str | Path, training_type: str | None = None) -> LoadedConfig:
    loaded = config_from_dict(read_config_dict(path), training_type, str(path))
    if loaded.source_format == "project":
        loaded.source_format = "project-toml" if str(path).lower().endswith(".toml") else "project-json"
    return loaded


def config_to_dict(config: BaseConfig) -> dict[str, Any]:
    """All options, config_version and training_type first."""
    data = config.model_dump()
    head = {"config_version": CONFIG_VERSION, "training_type": config.training_type}
    return {**head, **{k: v for k, v in data.items() if k not in head}}


def save_config_json(config: BaseConfig, path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(config_to_dict(config), indent=2, ensure_ascii=False) + "\n")


def to_trainer_toml(config: BaseConfig) -> str:
    """The TOML the trainer subprocess reads (same keys as the JSON; None values are left out), written
    by a spec-compliant writer so every string reads back exactly."""
    return tomlio.dumps(config_to_dict(config))


def save_trainer_toml(config: BaseConfig, path: str | Path) -> Path:
    return atomic_write_text(path, to_trainer_toml(config))
