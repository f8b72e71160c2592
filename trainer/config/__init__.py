"""The option schema: every option declared once (pydantic only — safe for the GUI to import).

Public API: the config classes and CONFIG_TYPES, SECTIONS/field_specs (for forms and docs),
validate_values/check_paths (in-page validation), load/save helpers and the Kohya_ss import.
"""
from .defaults import config_for, option, schema_default
from .files import (LoadedConfig, atomic_write_text, config_from_dict, config_to_dict, load_config_file,
                    migrate, read_config_dict, save_config_json, save_trainer_toml, to_trainer_toml)
from .kohya_import import detect_training_type, import_kohya_json
from .paths import check_paths, looks_like_hub_id
from .rules import ConfigError, Problem, config_class, parse_config, trains_text_encoder, validate_values
from .sd_scripts_export import sd_scripts_export, write_sd_scripts_files
from .spec import SECTIONS, FieldSpec, field_specs, parse_resolution
from .types import (CONFIG_TYPES, CONFIG_VERSION, BaseConfig, DreamboothConfig, FinetuneConfig, LoraConfig,
                    TextualInversionConfig)

__all__ = [
    "BaseConfig", "CONFIG_TYPES", "CONFIG_VERSION", "ConfigError", "DreamboothConfig", "FieldSpec",
    "FinetuneConfig", "LoadedConfig", "LoraConfig", "Problem", "SECTIONS", "TextualInversionConfig",
    "atomic_write_text", "check_paths", "config_class", "config_for", "config_from_dict", "config_to_dict",
    "detect_training_type", "field_specs", "import_kohya_json", "load_config_file", "looks_like_hub_id",
    "migrate", "option", "parse_config", "parse_resolution", "read_config_dict", "save_config_json",
    "save_trainer_toml", "schema_default", "sd_scripts_export", "to_trainer_toml", "trains_text_encoder",
    "validate_values", "write_sd_scripts_files",
]
