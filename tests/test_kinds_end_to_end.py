"""A user trains DreamBooth, fine-tuning and Textual Inversion with `python -m trainer run CONFIG`
on a tiny model and gets files that the project's loader and diffusers read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_train_support import trainer_cli
from test_kinds_helpers import one_thread, unet_probe  # noqa: F401  (one_thread: autouse fixture)
from trainer.config import parse_config, save_config_json
from trainer.models import load_base_model
from trainer.models.tiny import tiny_config_dir

ROOT = Path(__file__).resolve().parents[1]


def _wired(training_type: str) -> bool:
    """True once the loop creates this project's kind for the training type."""
    try:
        from trainer.kinds import KINDS, create_kind
        import trainer.train.run  # noqa: F401
    except ImportError:
        return False
    config = parse_config(training_type, {"token_string": "zq"} if training_type == "textual_inversion" else {})
    return isinstance(create_kind(config), KINDS[training_type])


def wired(training_type):
    return pytest.mark.skipif(not _wired(training_type), reason=f"{training_type} is not wired into the loop yet")


COMMON = dict(resolution="64", enable_bucket=False, train_batch_size=2, epoch=2, save_every_n_epochs=1,
              optimizer="AdamW", lr_scheduler="constant", lr_warmup=0, mixed_precision="no", seed=7,
              cache_latents=True, num_cpu_threads_per_process=1, save_precision="float")


def make_images(folder: Path, n: int = 3, tint: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), ((70 * i + tint) % 255, 120, (200 - tint) % 255)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"sks toy, colour {i}\n", encoding="utf-8")
    return folder


def run(training_type: str, values: dict, tmp_path: Path) -> list[dict]:
    config = parse_config(training_type, {**COMMON, **values})
    path = save_config_json(config, tmp_path / f"{training_type}.json")
    done = trainer_cli("run", str(path), timeout=300)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 and events[-1]["type"] == "done", done.stderr[-3000:]
    return events


@wired("dreambooth")
def test_dreambooth_run_with_class_images_saves_checkpoints_every_client_loads(tmp_path, tiny_model_dir):
    from diffusers import UNet2DConditionModel

    model = tiny_model_dir("sd1")
    make_images(tmp_path / "img" / "2_sks toy")
    make_images(tmp_path / "reg" / "1_toy", tint=90)
    events = run("dreambooth", dict(pretrained_model_name_or_path=str(model), train_data_dir=str(tmp_path / "img"),
                                    reg_data_dir=str(tmp_path / "reg"), output_dir=str(tmp_path / "out"),
                                    output_name="mydb", learning_rate=1e-4, learning_rate_te=1e-4,
                                    stop_text_encoder_training=2, prior_loss_weight=0.5), tmp_path)
    plan = next(e for e in events if e["type"] == "plan")
    assert (plan["reg_images"], plan["total_steps"]) == (6, 12)  # 6 instance + 6 class samples, batch 2, 2 epochs
    out = tmp_path / "out"
    assert events[-1]["outputs"] == [str(out / "mydb-000001.safetensors"), str(out / "mydb.safetensors")]

    base = load_base_model(model)
    trained = load_base_model(out / "mydb.safetensors")
    expected = unet_probe(trained.unet)
    assert not torch.allclose(expected, unet_probe(base.unet), atol=1e-4)
    te_before = base.text_encoders[0].get_input_embeddings().weight
    assert not torch.equal(trained.text_encoders[0].get_input_embeddings().weight, te_before)
    unet = UNet2DConditionModel.from_single_file(str(out / "mydb.safetensors"), config=str(tiny_config_dir("sd1")),
                                                 subfolder="unet", local_files_only=True)
    assert torch.equal(unet_probe(unet), expected)


@wired("textual_inversion")
def test_textual_inversion_run_writes_an_embedding_that_diffusers_loads(tmp_path, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    model = tiny_model_dir("sd1")
    make_images(tmp_path / "img" / "2_toy")
    events = run("textual_inversion", dict(pretrained_model_name_or_path=str(model),
                                           train_data_dir=str(tmp_path / "img"), output_dir=str(tmp_path / "out"),
                                           output_name="mytok", token_string="mytok", init_word="toy",
                                           num_vectors_per_token=2, template="object template",
                                           learning_rate=5e-2, epoch=1), tmp_path)
    final = tmp_path / "out" / "mytok.safetensors"
    assert events[-1]["outputs"] == [str(final)]
    assert any("init_word 'toy'" in e["message"] for e in events if e["type"] == "warning")

    comps = load_base_model(model).components()
    pipe = StableDiffusionPipeline(**{k: comps[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def ids(text):
        prompt = pipe.maybe_convert_prompt(text, pipe.tokenizer)  # "mytok" -> "mytok mytok_1"
        return pipe.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids

    with torch.no_grad():
        init = pipe.text_encoder(ids("a photo of toy")).last_hidden_state
        pipe.load_textual_inversion(str(final), token="mytok")
        learned = pipe.text_encoder(ids("a photo of mytok")).last_hidden_state
    assert pipe.tokenizer.convert_tokens_to_ids(["mytok", "mytok_1"]) == [756, 757]
    assert learned.shape == init.shape and not torch.allclose(learned, init, atol=1e-3)


@wired("finetune")
def test_finetune_run_trains_from_a_metadata_json_built_from_captions_and_tags(tmp_path, tiny_model_dir):
    from trainer.kinds.finetune_metadata import merge_captions_to_metadata, merge_tags_to_metadata

    model = tiny_model_dir("sd1")
    images = make_images(tmp_path / "images")
    for i in range(3):
        (images / f"{i}.caption").write_text(f"a picture number {i}")
    merge_captions_to_metadata(images, ".caption", tmp_path / "meta_cap.json")
    merge_tags_to_metadata(images, tmp_path / "meta_cap.json", tmp_path / "meta_cap_dd.json")
    events = run("finetune", dict(pretrained_model_name_or_path=str(model), train_data_dir=str(images),
                                  in_json=str(tmp_path / "meta_cap_dd.json"), output_dir=str(tmp_path / "out"),
                                  output_name="myft", learning_rate=1e-4, dataset_repeats=2, epoch=1), tmp_path)
    plan = next(e for e in events if e["type"] == "plan")
    assert (plan["images"], plan["repeats_total"], plan["total_steps"]) == (3, 6, 3)
    trained = load_base_model(tmp_path / "out" / "myft.safetensors")
    base = load_base_model(model)
    assert not torch.allclose(unet_probe(trained.unet), unet_probe(base.unet), atol=1e-4)
    # fine-tuning leaves the text encoder alone unless train_text_encoder is on
    assert torch.equal(trained.text_encoders[0].get_input_embeddings().weight,
                       base.text_encoders[0].get_input_embeddings().weight)


@wired("textual_inversion")
def test_an_interrupted_textual_inversion_run_resumes_to_the_same_embedding(tmp_path, tiny_model_dir):
    """save_state after epoch 1, the run is lost after that; resuming gives exactly the uninterrupted result."""
    from safetensors.torch import load_file

    model = tiny_model_dir("sd1")
    make_images(tmp_path / "img" / "2_toy")
    values = dict(pretrained_model_name_or_path=str(model), train_data_dir=str(tmp_path / "img"),
                  output_dir=str(tmp_path / "out"), output_name="mytok", token_string="mytok", init_word="toy",
                  learning_rate=5e-2, save_state=True)
    run("textual_inversion", values, tmp_path)
    final = tmp_path / "out" / "mytok.safetensors"
    uninterrupted = load_file(final)["emb_params"]
    final.rename(tmp_path / "first.safetensors")  # as if the run had died during epoch 2
    events = run("textual_inversion", dict(values, resume=str(tmp_path / "out" / "mytok-000001-state")), tmp_path)
    assert events[-1]["outputs"] == [str(final)]
    assert torch.equal(load_file(final)["emb_params"], uninterrupted)
