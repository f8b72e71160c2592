"""Where the GUI keeps things, which folders it may browse, and the GUI defaults file (--config).

The defaults file is TOML. `[defaults]` applies to every training tab, `[lora]`, `[dreambooth]`,
`[textual_inversion]`, `[finetune]` to one tab; `[server] data_roots = [...]` adds browsable folders:

    [server]
    data_roots = ["/workspace/datasets"]
    [defaults]
    output_dir = "/workspace/outputs"
    [lora]
    network_dim = 16
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

try:                       # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAINING_TYPES = ("dreambooth", "lora", "textual_inversion", "finetune")


class SettingsError(ValueError):
    pass


@dataclass
class GuiSettings:
    project_root: Path = PROJECT_ROOT
    workspace: Path = PROJECT_ROOT / "workspace"
    data_roots: list[Path] = field(default_factory=list)
    headless: bool = False
    defaults: dict = field(default_factory=dict)
    python: str = sys.executable

    @property
    def allowed_roots(self) -> list[Path]:
        """Folders the file picker may show: the project (models/, dataset/), the workspace, --data_root."""
        from .picker import normalize_roots
        return normalize_roots([self.project_root, self.workspace, *self.data_roots])

    @property
    def models_dir(self) -> Path:
        return self.project_root / "models"

    @property
    def presets_dir(self) -> Path:
        return self.project_root / "configs" / "presets"

    @property
    def user_presets_dir(self) -> Path:
        return self.workspace / "presets"

    def defaults_for(self, training_type: str) -> dict:
        merged = dict(self.defaults.get("defaults", {}))
        merged.update(self.defaults.get(training_type, {}))
        return merged


def read_defaults_file(path: str | Path | None) -> dict:
    """Load the GUI defaults TOML; a missing default file is fine, a broken one is an error."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"GUI defaults file '{p}' does not exist (--config). Remove the flag or "
                            "create the file; see docs/gui.md for its format.")
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except Exception as exc:   # tomllib.TOMLDecodeError / toml.TomlDecodeError
        raise SettingsError(f"GUI defaults file '{p}' is not valid TOML: {exc}") from exc
    unknown = set(data) - {"server", "defaults", *TRAINING_TYPES}
    if unknown:
        raise SettingsError(f"GUI defaults file '{p}': unknown section(s) {sorted(unknown)}; use [server], "
                            f"[defaults] or one of {list(TRAINING_TYPES)}.")
    return data


def make_settings(*, config: str | None = None, data_roots: list[str] | None = None,
                  headless: bool = False, workspace: str | None = None) -> GuiSettings:
    defaults = read_defaults_file(config)
    roots = [Path(r) for r in (data_roots or [])]
    roots += [Path(r) for r in defaults.get("server", {}).get("data_roots", [])]
    for root in roots:
        if not root.is_dir():
            raise SettingsError(f"--data_root '{root}' is not a folder.")
    ws = Path(workspace or defaults.get("server", {}).get("workspace", PROJECT_ROOT / "workspace"))
    ws.mkdir(parents=True, exist_ok=True)
    return GuiSettings(workspace=ws.resolve(), data_roots=roots, headless=headless, defaults=defaults)
