"""Tagging throughput: one image at a time vs the batched, pipelined path, on a realistic-size model.

    python -m captioning.bench --images 24 --batch_size 8

Builds (once, cached in --workdir) a ConvNeXt-V2-base-shaped tagger with random weights exported to
ONNX at 448×448 NHWC (the shape of SmilingWolf's wd-v1-4-convnextv2-tagger-v2: 9083 outputs), makes
photo-sized JPEGs, then tags them twice with the real `tag_images` code:
  * baseline: batch_size=1, no decode threads (decode → infer → write, one image after another);
  * pipelined: batch_size=N with decoding in background threads overlapping inference.
Needs torch + transformers (to build the network) and onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

N_TAGS = 9083  # wd-v1-4-convnextv2-tagger-v2: 4 ratings + general + character


def build_model(folder: Path, size: int = 448) -> Path:
    if (folder / "model.onnx").exists():
        return folder
    import torch
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    from .tiny import write_tags_csv

    folder.mkdir(parents=True, exist_ok=True)
    cfg = ConvNextV2Config(depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024], num_labels=N_TAGS, image_size=size)
    torch.manual_seed(0)
    net = ConvNextV2ForImageClassification(cfg).eval()

    class NHWCTagger(torch.nn.Module):  # the tagger interface: BGR 0..255 NHWC in, sigmoid out
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            x = x.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1
            return torch.sigmoid(self.m(pixel_values=x).logits)

    tmp = folder / "model.onnx.tmp"
    torch.onnx.export(
        NHWCTagger(net), (torch.zeros(1, size, size, 3),), str(tmp), dynamo=False, opset_version=17,
        input_names=["input_1:0"], output_names=["predictions_sigmoid"],
        dynamic_axes={"input_1:0": {0: "batch"}, "predictions_sigmoid": {0: "batch"}},
    )  # fmt: skip
    os.replace(tmp, folder / "model.onnx")
    tags = [(r, 9) for r in ("general", "sensitive", "questionable", "explicit")]
    tags += [(f"tag_{i}", 0) for i in range(N_TAGS - 4 - 2000)] + [(f"character_{i}", 4) for i in range(2000)]
    write_tags_csv(folder / "selected_tags.csv", tags)
    return folder


def make_images(folder: Path, n: int, size=(1536, 1024)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        path = folder / f"photo_{i:03d}.jpg"
        if path.exists():
            continue
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 10) % 256, (xx + yy) % 256], -1)
        noise = rng.integers(0, 40, (h, w, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return folder


def run(images: int, batch_size: int, workers: int, workdir: Path) -> dict:
    from .wd14 import load_tagger, tag_images

    model = build_model(workdir / "convnextv2-base-random")
    photos = make_images(workdir / "photos", images)
    tagger = load_tagger(model)
    tag_images(photos, tagger, batch_size=batch_size, existing="overwrite", max_data_loader_n_workers=workers)  # warm-up
    results = {}
    for name, bs, wk in (("one_at_a_time", 1, 0), ("batched_pipelined", batch_size, workers)):
        t = time.perf_counter()
        r = tag_images(photos, tagger, batch_size=bs, existing="overwrite", max_data_loader_n_workers=wk)
        dt = time.perf_counter() - t
        results[name] = {"batch_size": bs, "decode_threads": wk, "seconds": round(dt, 2),
                         "images_per_s": round(r.processed / dt, 3)}  # fmt: skip
    results["speedup"] = round(results["batched_pipelined"]["images_per_s"] / results["one_at_a_time"]["images_per_s"], 2)
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    results["images"] = f"{images} JPEGs 1536x1024 -> 448x448, model ConvNeXt-V2-base shape, {N_TAGS} tags"
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "captioning-bench"))
    a = ap.parse_args()
    print(json.dumps(run(a.images, a.batch_size, a.workers, Path(a.workdir)), indent=1))


if __name__ == "__main__":
    main()
