"""A kohya_ss user runs "Extract LyCORIS LoCon": a LoCon from a fine-tune, each layer's rank chosen by LyCORIS'
modes (fixed, threshold, ratio, quantile, full), saved under kohya's names so every client loads it."""
from __future__ import annotations

import pytest
import torch

from trainer.models import load_base_model
from trainer.networks import verify_lora_file
from trainer.tools.extract_locon import extract_locon, locon_rank
from trainer.tools.lora_io import read_modules
from trainer.tools.merge import all_targets_of
from trainer.tools.output import ToolError

from test_tools_lora import deltas, tuned_model  # noqa: F401  (the module's fine-tune fixture)
from test_train_support import trainer_cli


def _spectrum_matrix(out_ch: int, in_ch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_ch, out_ch, generator=g))
    v, _ = torch.linalg.qr(torch.randn(in_ch, in_ch, generator=g))
    s = torch.exp(-torch.arange(min(out_ch, in_ch), dtype=torch.float32) / 3)  # 1, 0.72, 0.51, …
    return u[:, :s.numel()] @ torch.diag(s) @ v[:, :s.numel()].T


@pytest.mark.parametrize("mode, param", [("fixed", 5), ("threshold", 0.2), ("ratio", 0.3), ("quantile", 0.6)])
def test_each_mode_keeps_the_rank_lycoris_own_extractor_keeps(mode, param):
    from lycoris.utils import extract_linear

    delta = _spectrum_matrix(96, 80, seed=1)
    (down, _, _), how = extract_linear(delta, mode, param)
    assert how == "low rank"
    assert locon_rank(torch.linalg.svdvals(delta), mode, param) == down.shape[0]


def test_a_quantile_locon_gives_each_layer_its_own_rank_and_loads_everywhere(tuned_model, tmp_path):  # noqa: F811
    base_path, tuned_path = tuned_model
    out = tmp_path / "locon.safetensors"
    proc = trainer_cli("lora", "extract-locon", str(base_path), str(tuned_path), str(out), "--mode", "quantile",
                       "--linear_quantile", "0.5", "--conv_quantile", "0.3", "--save_precision", "float")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LyCORIS mode quantile, linear_quantile 0.5, conv_quantile 0.3" in proc.stdout
    modules, meta = read_modules(out)
    org, tuned = load_base_model(base_path), load_base_model(tuned_path)
    targets = {t.lora_name: (t, tt) for t, tt in zip(all_targets_of(org), all_targets_of(tuned))}
    for name, m in modules.items():
        t, tt = targets[name]
        s = torch.linalg.svdvals((tt.module.weight - t.module.weight).float().flatten(1))
        conv3x3 = m.is_conv and m.down.shape[-1] > 1
        assert m.rank == locon_rank(s, "quantile", 0.3 if conv3x3 else 0.5), name
        assert m.alpha == m.rank
    ranks = {m.rank for m in modules.values()}
    assert len(ranks) > 2 and any(m.is_conv and m.down.shape[-1] == 3 for m in modules.values())
    assert meta["ss_network_dim"] == str(max(m.rank for m in modules.values() if m.down.shape[-1:] != (3,)))
    assert verify_lora_file(out, org).ok


def test_full_mode_is_the_weight_difference_itself(tuned_model, tmp_path):  # noqa: F811
    base_path, tuned_path = tuned_model
    out = tmp_path / "full.safetensors"
    extract_locon(base_path, tuned_path, out, mode="full", save_precision="float", show_progress=False)
    org, tuned = load_base_model(base_path), load_base_model(tuned_path)
    want = {t.lora_name: tt.module.weight - t.module.weight for t, tt in zip(all_targets_of(org), all_targets_of(tuned))}
    for name, d in deltas(out).items():
        torch.testing.assert_close(d, want[name], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "ratio", "linear_ratio": 1.5}, "--linear_ratio is a fraction"),
    ({"mode": "fixed", "conv_dim": 0}, "--conv_dim must be ≥ 1"),
    ({"mode": "threshold", "linear_threshold": -1.0}, "--linear_threshold is a singular value"),
    ({"mode": "svd"}, "--mode must be one of"),
])
def test_a_setting_outside_its_mode_range_is_refused_naming_it(tmp_path, kwargs, message):
    with pytest.raises(ToolError, match=message):
        extract_locon(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors", **kwargs)
    assert list(tmp_path.iterdir()) == []
