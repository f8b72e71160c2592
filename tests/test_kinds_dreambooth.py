"""DreamBooth / fine-tune: the whole U-Net trains and the result is a complete model that A1111,
ComfyUI (original single-file layout) and diffusers load."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from test_kinds_helpers import one_thread, train_steps, unet_probe  # noqa: F401  (one_thread: autouse fixture)
from test_models_helpers import assert_outputs_match, assert_same_weights
from trainer.config import DreamboothConfig, FinetuneConfig
from trainer.kinds import DreamboothKind, FinetuneKind, KindError, create_kind
from trainer.models import load_base_model
from trainer.models.tiny import tiny_config_dir

CAPTIONS = ("a photo of sks dog", "sks dog on the beach")


def db_config(**overrides):
    values = dict(learning_rate=1e-3, learning_rate_te=0.0, save_precision="float", seed=1)
    values.update(overrides)
    return DreamboothConfig(**values)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_short_run_changes_the_unet_and_the_single_file_loads_in_our_loader_and_in_diffusers(
        family, tmp_path, tiny_model_dir):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    base = load_base_model(tiny_model_dir(family))
    untrained = unet_probe(base.unet)
    kind = create_kind(db_config())
    train_steps(kind, base, kind.prepare(base), CAPTIONS, steps=2)
    trained = unet_probe(base.unet)
    assert not torch.allclose(trained, untrained, atol=1e-4)

    out = kind.save(tmp_path / "mydog.safetensors", step=2, epoch=1)
    assert out == tmp_path / "mydog.safetensors"
    again = load_base_model(out)
    assert again.family == family
    assert_same_weights(again.unet, base.unet)  # the saved file holds exactly the trained weights
    assert_outputs_match(unet_probe(again.unet), trained)

    config = str(tiny_config_dir(family))  # the shipped config folder: no network
    unet = UNet2DConditionModel.from_single_file(str(out), config=config, subfolder="unet", local_files_only=True)
    assert_same_weights(unet, base.unet)
    assert_outputs_match(unet_probe(unet), trained)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None}
    pipe = cls.from_single_file(str(out), config=config, local_files_only=True, **extra)
    assert_same_weights(pipe.unet, base.unet)
    assert_outputs_match(unet_probe(pipe.unet), trained)
    with safe_open(out, "pt") as fh:
        assert fh.metadata()["ss_training_type"] == "dreambooth" and fh.metadata()["ss_steps"] == "2"


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_save_precision_sets_the_dtype_of_the_saved_checkpoint(precision, dtype, tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    kind = create_kind(db_config(save_precision=precision))
    kind.prepare(base)
    out = kind.save(tmp_path / "half.safetensors")
    with safe_open(out, "pt") as fh:
        assert fh.get_tensor("model.diffusion_model.out.2.weight").dtype == dtype
    assert torch.allclose(unet_probe(load_base_model(out).unet), unet_probe(base.unet), atol=0.05, rtol=0.05)
    assert base.unet.dtype == torch.float32  # saving never casts the model being trained


def test_ckpt_and_diffusers_folder_outputs(tmp_path, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    base = load_base_model(tiny_model_dir("sd2"))
    kind = create_kind(db_config(save_model_as="ckpt"))
    train_steps(kind, base, kind.prepare(base), CAPTIONS, steps=1)
    expected = unet_probe(base.unet)
    assert kind.output_ext == "ckpt"
    ckpt = kind.save(tmp_path / "model-000001.ckpt")
    again = load_base_model(ckpt).unet
    assert_same_weights(again, base.unet)
    assert_outputs_match(unet_probe(again), expected)

    folder_kind = create_kind(db_config(save_model_as="diffusers_safetensors"))
    folder_kind.prepare(base)
    assert folder_kind.output_ext == ""
    folder = folder_kind.save(tmp_path / "model-000002.diffusers_safetensors")
    assert folder == tmp_path / "model-000002" and (folder / "model_index.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert_same_weights(pipe.unet, base.unet)
    assert_outputs_match(unet_probe(pipe.unet), expected)
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # the SD2 v-model stays a v-model


def test_saving_never_overwrites_an_existing_model(tmp_path, tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    kind = create_kind(db_config())
    kind.prepare(base)
    (tmp_path / "mine.safetensors").write_bytes(b"the user's file")
    with pytest.raises(FileExistsError):
        kind.save(tmp_path / "mine.safetensors")
    assert (tmp_path / "mine.safetensors").read_bytes() == b"the user's file"


def test_text_encoder_trains_until_stop_text_encoder_training_then_freezes(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    te = base.text_encoders[0]
    kind = create_kind(db_config(learning_rate_te=1e-3, stop_text_encoder_training=2))
    groups = kind.prepare(base)
    assert [g["name"] for g in groups] == ["unet", "text_encoder1"] and groups[1]["lr"] == 1e-3
    start = {n: p.detach().clone() for n, p in te.named_parameters()}
    optimizer = train_steps(kind, base, groups, CAPTIONS, steps=2)  # steps 1 and 2
    assert not kind.text_encoder_grad()
    after_stop = {n: p.detach().clone() for n, p in te.named_parameters()}
    assert any(not torch.equal(start[n], after_stop[n]) for n in start)  # it did train

    unet_before = unet_probe(base.unet)
    for p in (p for g in groups for p in g["params"]):
        p.grad = None
    # two more steps with the same optimizer (AdamW with weight decay): the TE must not move at all
    g = torch.Generator().manual_seed(5)
    from trainer.models.text import encode_prompt, tokenize_prompt
    for step in (3, 4):
        with torch.set_grad_enabled(kind.text_encoder_grad()):
            hidden, _ = encode_prompt(base, tokenize_prompt(base, list(CAPTIONS)))
        noise = torch.randn(2, 4, 8, 8, generator=g)
        pred = base.unet(torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900]), hidden).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        kind.after_optimizer_step(step)
    assert all(torch.equal(after_stop[n], p.detach()) for n, p in te.named_parameters())
    assert not torch.equal(unet_probe(base.unet), unet_before)  # the U-Net keeps training


def test_learning_rate_te_zero_keeps_the_text_encoder_frozen(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    kind = create_kind(db_config(learning_rate_te=0.0))
    groups = kind.prepare(base)
    assert [g["name"] for g in groups] == ["unet"]
    assert not any(p.requires_grad for p in base.text_encoders[0].parameters())
    assert not kind.text_encoder_grad()


def test_finetune_trains_the_text_encoder_only_when_asked():
    assert not FinetuneKind(FinetuneConfig()).train_te
    kind = FinetuneKind(FinetuneConfig(train_text_encoder=True, learning_rate=2e-6))
    assert kind.train_te and kind.learning_rate_te == 2e-6  # 0 = the U-Net's rate, as sd-scripts
    with pytest.raises(KindError, match="cache_text_encoder_outputs"):
        FinetuneKind(FinetuneConfig(train_text_encoder=True, cache_text_encoder_outputs=True))
    assert isinstance(create_kind(DreamboothConfig()), DreamboothKind)


def _image(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), color).save(path)


def test_prior_preservation_weights_class_images_with_prior_loss_weight(tmp_path):
    """Instance images count fully, class (regularization) images with prior_loss_weight, in every batch."""
    from trainer.data import TrainDataset, scan_dataset

    for i in range(3):
        _image(tmp_path / "img" / "5_sks dog" / f"{i}.png", (200, 10 * i, 0))
        _image(tmp_path / "reg" / "1_dog" / f"{i}.png", (0, 10 * i, 200))
    cfg = db_config(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"),
                    prior_loss_weight=0.25, resolution="64", train_batch_size=4, enable_bucket=False)
    dataset = TrainDataset(scan_dataset(cfg), cfg)
    seen_reg = seen_instance = 0
    for index in range(len(dataset)):
        batch = dataset[index]
        reg = batch["is_reg"]
        assert torch.equal(batch["loss_weights"][reg], torch.full((int(reg.sum()),), 0.25))
        assert torch.equal(batch["loss_weights"][~reg], torch.ones(int((~reg).sum())))
        assert all(("reg" in p) == bool(r) for p, r in zip(batch["paths"], reg.tolist()))
        seen_reg += int(reg.sum())
        seen_instance += int((~reg).sum())
    assert seen_instance == 15 and seen_reg == 15  # reg balanced to the instance samples


def test_sdxl_text_encoders_get_learning_rate_te_and_te2_as_sd_scripts_does(tiny_model_dir):
    """sdxl_train.py: learning_rate_te1 / learning_rate_te2, and 0 keeps that encoder frozen."""
    base = load_base_model(tiny_model_dir("sdxl"))
    groups = create_kind(db_config(learning_rate_te=2e-6, learning_rate_te2=0.0)).prepare(base)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-3), ("text_encoder1", 2e-6)]
    assert not any(p.requires_grad for p in base.text_encoders[1].parameters())
    base = load_base_model(tiny_model_dir("sdxl"))
    groups = create_kind(db_config(learning_rate_te=2e-6, learning_rate_te2=3e-6)).prepare(base)
    assert [(g["name"], g["lr"]) for g in groups][1:] == [("text_encoder1", 2e-6), ("text_encoder2", 3e-6)]
