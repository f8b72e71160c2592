"""What every network type shares once its modules exist: the modules by part (U-Net or text
encoders), patching the base layers' forwards in and out, and the strength multiplier.

A network class mixes this in before `nn.Module` and provides `loras` (its modules: each has
`lora_name`, `apply_to()`, `restore()` and `multiplier`) and `parts` (lora_name → "unet" / "te" /
"te1" / …): `LoRANetwork` (network.py), `LycorisNetwork` (lycoris_net.py) and `OFTNetwork` (oft_flux.py).
"""
from __future__ import annotations


class PatchedNetwork:
    multiplier: float

    def hold_modules(self, family: str, catalog, modules, parts, settings) -> None:
        """Keep the built modules (as children, by lora_name) and what they were built from: the family, the
        catalog of layers, each module's part and the settings (whose multiplier is the strength)."""
        self.family = family
        self.catalog = list(catalog)
        self.parts = dict(parts)
        self.settings = dict(settings)
        self.multiplier = float(self.settings.get("multiplier", 1.0))
        self._backups = {}  # (lora_name, part index) → base weight kept while merged
        for m in modules:
            self.add_module(m.lora_name, m)

    @property
    def unet_loras(self) -> list:
        return [m for m in self.loras if self.parts[m.lora_name] == "unet"]

    @property
    def text_encoder_loras(self) -> list:
        return [m for m in self.loras if self.parts[m.lora_name] != "unet"]

    def apply_to(self):
        """Patch the base modules' forwards so each module's branch runs (training / dynamic use)."""
        for m in self.loras:
            m.apply_to()
        return self

    def restore(self) -> None:
        """Give the base modules their own forwards back, last patched first (merged weights stay merged)."""
        for m in reversed(self.loras):
            m.restore()

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)
        for m in self.loras:
            m.multiplier = self.multiplier
