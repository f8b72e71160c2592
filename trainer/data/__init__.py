"""Dataset pipeline: concept folders, captions, buckets, image loading, latent cache, preflight.

Names are imported on first use, so `from trainer.data import preflight` (the GUI's call) does not
load torch; the dataset and caches do. The trainer's data path is trainer/train/setup.py `build_data`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "BucketManager": "buckets", "Placement": "buckets", "make_bucket_resolutions": "buckets",
    "process_caption": "captions", "read_caption": "captions",
    "BatchKey": "epochs", "EpochPlan": "epochs",
    "TrainDataset": "dataset",
    "DatasetError": "errors",
    "LatentCache": "latent_cache", "vae_fingerprint": "latent_cache",
    "check_cache_compatible": "loader", "loader_workers": "loader",
    "parse_resolution": "options",
    "PreflightReport": "preflight", "preflight": "preflight",
    "ScanResult": "scan", "scan_dataset": "scan",
    "TextEncoderOutputCache": "te_cache", "fixed_captions": "te_cache",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
