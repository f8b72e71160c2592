"""Reading options with the schema's defaults only: no call site declares a default of its own.

`config_for` builds a full typed config of any training type from a few overrides (tests, benches, tools);
`option` reads an option that only some training types declare (module_dropout is LoRA's): a type without
it runs with the schema's default, i.e. the option off.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from .types import CONFIG_TYPES, BaseConfig


def config_for(training_type: str = "lora", /, **overrides: Any) -> BaseConfig:
    """The config a user gets with these values set and every other option at the schema's default,
    validated as a config file is (unknown names, ranges and cross-field rules raise ConfigError)."""
    from .rules import parse_config  # rules read options through `option`

    return parse_config(training_type, overrides, source=f"config_for({training_type!r})")


@lru_cache(maxsize=None)
def schema_default(name: str) -> Any:
    """The default every training type that declares `name` gives it."""
    defaults = {repr(cls.model_fields[name].default): cls.model_fields[name].default
                for cls in CONFIG_TYPES.values() if name in cls.model_fields}
    if not defaults:
        raise KeyError(f"{name!r} is not an option of any training type (trainer/config/types.py)")
    if len(defaults) > 1:
        raise KeyError(f"{name!r} has a different default per training type ({', '.join(defaults)}); read it "
                       "from a config of the type that declares it")
    return next(iter(defaults.values()))


def option(config: BaseConfig, name: str) -> Any:
    """`config.<name>`, or the schema's default when the config's training type has no such option."""
    fields = getattr(type(config), "model_fields", None)
    if fields is None:
        raise TypeError(f"{type(config).__name__} is not a typed config; build one with "
                        "trainer.config.config_for(training_type, **values)")
    return getattr(config, name) if name in fields else schema_default(name)
