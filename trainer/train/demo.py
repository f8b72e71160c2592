"""`python -m trainer demo DIR`: everything a fresh install needs for a real (tiny) training run.

Writes DIR/models/tiny-sd1.safetensors (a random-weight SD1-shaped model in the single-file layout),
DIR/dataset/images/10_toy/*.png + .txt (four coloured shapes with captions) and DIR/demo_lora.json,
a LoRA config that trains on them in well under a minute on a CPU:

    python -m trainer demo demo/ && python -m trainer run demo/demo_lora.json
"""
from __future__ import annotations

from pathlib import Path

SHAPES = [("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "circle")]
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SIZE = 64


def draw(colour: str, shape: str):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (245, 245, 240))
    d = ImageDraw.Draw(image)
    box = (12, 12, SIZE - 12, SIZE - 12)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(SIZE // 2, 10), (SIZE - 10, SIZE - 12), (10, SIZE - 12)], fill=fill)
    return image


def write_demo(folder: str | Path) -> Path:
    """Create the demo files under `folder` (refuses to touch existing ones) and return the config path."""
    from trainer.config import parse_config, save_config_json
    from trainer.models.tiny import write_tiny_model

    folder = Path(folder).expanduser().resolve()
    config_path = folder / "demo_lora.json"
    model = folder / "models" / "tiny-sd1.safetensors"
    images = folder / "dataset" / "images" / "10_toy"
    for existing in (config_path, model, images):
        if existing.exists():
            raise FileExistsError(f"{existing} already exists; choose an empty folder for the demo")
    images.mkdir(parents=True)
    model.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_model("sd1", model, layout="single_file", seed=0)
    for i, (colour, shape) in enumerate(SHAPES):
        draw(colour, shape).save(images / f"toy_{i:02d}.png")
        (images / f"toy_{i:02d}.txt").write_text(f"toy, {colour} {shape}\n", encoding="utf-8")
    config = parse_config("lora", {
        "pretrained_model_name_or_path": str(model),
        "train_data_dir": str(folder / "dataset" / "images"),
        "output_dir": str(folder / "outputs"),
        "output_name": "toy",
        "resolution": str(SIZE), "enable_bucket": False,
        "min_bucket_reso": SIZE, "max_bucket_reso": SIZE * 2, "bucket_reso_steps": 32,
        "train_batch_size": 2, "epoch": 2, "save_every_n_epochs": 1,
        "network_dim": 4, "network_alpha": 4,
        "optimizer": "AdamW", "learning_rate": 1e-3, "lr_scheduler": "constant", "lr_warmup": 0,
        "mixed_precision": "no", "save_precision": "fp16", "seed": 1234,
        "cache_latents": True, "xformers": "sdpa",
        "sample_every_n_epochs": 1, "sample_sampler": "euler_a",
        "sample_prompts": f"toy, red circle --w {SIZE} --h {SIZE} --s 4 --l 5 --d 1",
        "num_cpu_threads_per_process": 1,
    })
    save_config_json(config, config_path)
    return config_path
