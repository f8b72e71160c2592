"""block_lr: an SDXL DreamBooth / fine-tune user gives each of sd-scripts' 23 U-Net blocks its own learning rate
(sdxl_train.py --block_lr); 0 keeps a block exactly as it was. The blocks are sd-scripts' own split of the
U-Net, the Kohya_ss JSON field imports and the sd-scripts export writes it back."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import trainer.config as tc
from test_kinds_helpers import one_thread, train_steps  # noqa: F401  (one_thread: autouse fixture)
from trainer.config.block_lr import SDXL_UNET_BLOCKS
from trainer.config.sd_scripts_export import sd_scripts_export
from trainer.kinds import KindError, create_kind
from trainer.kinds.block_lr import block_lr_param_groups
from trainer.models import load_base_model

CAPTIONS = ("a photo of sks dog", "sks dog on the beach")
FROZEN = {0: "embeddings", 5: "IN4", 11: "MID1", 22: "out"}


def rates(frozen=FROZEN, rate=1e-3) -> list[float]:
    return [0.0 if i in frozen else float(f"{rate * (1 + i / 10):g}") for i in range(SDXL_UNET_BLOCKS)]


def text(values) -> str:
    return ",".join(format(v, "g") for v in values)


def sd_scripts_block(sgm_name: str) -> int:
    """sd-scripts' sdxl_train.py get_block_params_to_optimize, as written there (the reference)."""
    if sgm_name.startswith("time_embed.") or sgm_name.startswith("label_emb."):
        return 0
    if sgm_name.startswith("input_blocks."):
        return 1 + int(sgm_name.split(".")[1])
    if sgm_name.startswith("middle_block."):
        return 10 + int(sgm_name.split(".")[1])
    if sgm_name.startswith("output_blocks."):
        return 13 + int(sgm_name.split(".")[1])
    assert sgm_name.startswith("out."), sgm_name
    return 22


def test_every_unet_parameter_lands_in_exactly_one_of_sd_scripts_23_blocks(tiny_model_dir):
    """Read back against the checkpoint's own SGM keys (loaded through diffusers' converter): each block holds
    the same tensors as sd-scripts' split of the original file."""
    path = tiny_model_dir("sdxl")
    unet = load_base_model(path).unet
    groups = block_lr_param_groups(unet, [1e-6] * SDXL_UNET_BLOCKS)
    assert len(groups) == SDXL_UNET_BLOCKS  # the tiny SDXL keeps the real block layout: every block is there
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(unet.parameters()))

    expected: list[list[float]] = [[] for _ in range(SDXL_UNET_BLOCKS)]
    with safe_open(path, "pt") as fh:
        for key in fh.keys():
            if key.startswith("model.diffusion_model."):
                name = key[len("model.diffusion_model."):]
                expected[sd_scripts_block(name)].append(round(fh.get_tensor(key).double().sum().item(), 6))
    for index, group in enumerate(groups):
        ours = sorted(round(p.detach().double().sum().item(), 6) for p in group["params"])
        assert ours == sorted(expected[index]), f"block {index} ({group['name']})"


def test_a_dreambooth_run_leaves_the_zero_blocks_exactly_as_they_were_and_trains_the_others(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sdxl"))
    before = {n: p.detach().clone() for n, p in base.unet.named_parameters()}
    config = tc.DreamboothConfig(learning_rate=1e-3, learning_rate_te=0.0, seed=1, block_lr=text(rates()))
    kind = create_kind(config)
    groups = kind.prepare(base)
    expected = [(f"unet_{name}", r) for name, r in zip(_names(), rates()) if r]
    assert [(g["name"], g["lr"]) for g in groups] == expected
    train_steps(kind, base, groups, CAPTIONS, steps=2, weight_decay=0.0)

    block_of = {id(p): g["name"] for g in block_lr_param_groups(base.unet, [1.0] * SDXL_UNET_BLOCKS)
                for p in g["params"]}
    changed: dict[str, bool] = {}
    for name, p in base.unet.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        block = block_of[id(p)]
        changed[block] = changed.get(block, False) or moved
        if block[len("unet_"):] in FROZEN.values():
            assert not moved, f"{name} is in a block at rate 0 but changed"
    assert sorted(b for b, moved in changed.items() if not moved) == sorted(f"unet_{n}" for n in FROZEN.values())


def test_block_lr_on_a_model_that_is_not_sdxl_is_refused_naming_the_field(tiny_model_dir):
    base = load_base_model(tiny_model_dir("sd1"))
    kind = create_kind(tc.DreamboothConfig(learning_rate_te=0.0, block_lr=text(rates())))
    with pytest.raises(KindError, match="block_lr .*SD1.x.*clear block_lr"):
        kind.prepare(base)


def test_fused_backward_pass_and_the_lr_schedule_follow_the_block_rates(tiny_model_dir):
    """Adafactor updating each weight inside the backward pass uses each block's rate, like the ordinary step;
    the schedule scales every group (cosine: all rates shrink by the same factor)."""
    plain, plain_lrs = _adafactor_steps(tiny_model_dir("sdxl"), fused=False)
    fused, fused_lrs = _adafactor_steps(tiny_model_dir("sdxl"), fused=True)
    changed = [k for k in plain if not torch.equal(plain[k], fused[k])]
    assert not changed, changed[:5]
    start = [r for r in rates() if r]
    assert plain_lrs == fused_lrs and len(plain_lrs) == len(start)
    factor = plain_lrs[0] / start[0]
    assert 0 < factor < 1 and plain_lrs == pytest.approx([r * factor for r in start])
    untouched = load_base_model(tiny_model_dir("sdxl")).unet.state_dict()
    assert torch.equal(fused["conv_out.weight"], untouched["conv_out.weight"])  # "out" is at 0
    assert not torch.equal(fused["conv_in.weight"], untouched["conv_in.weight"])  # IN0 trains


def _adafactor_steps(model, fused: bool, n_steps: int = 2):
    from accelerate.state import AcceleratorState

    from trainer.train import setup as S
    from trainer.train.graphs import make_step_fn

    AcceleratorState._reset_state(True)
    try:
        config = tc.parse_config("dreambooth", dict(
            pretrained_model_name_or_path=str(model), train_data_dir="unused", output_dir="unused",
            optimizer="Adafactor", optimizer_args="relative_step=False scale_parameter=False warmup_init=False",
            learning_rate=1e-3, learning_rate_te=0, lr_scheduler="cosine", lr_warmup=0, mixed_precision="no",
            seed=7, max_grad_norm=0, fused_backward_pass=fused, block_lr=text(rates())))
        accelerator, mp = S.make_accelerator(config, print)
        base = S.load_base(config, accelerator, mp)
        kind = create_kind(config)
        groups = kind.prepare(base, torch.float32)
        ctx = S.build_step_context(config, base, kind, groups, accelerator, mp, 7, print, 4, cached=True)
        step_fn = make_step_fn(ctx, config, print)
        g = torch.Generator().manual_seed(1)
        for step in range(n_steps):
            size = torch.tensor([[64, 64]])
            batch = {"latents": torch.randn(1, ctx.latent_channels, 8, 8, generator=g),
                     "captions": ["a photo of sks dog"], "loss_weights": torch.ones(1),
                     "original_sizes_hw": size, "crop_top_lefts": torch.zeros(1, 2, dtype=torch.long),
                     "target_sizes_hw": size}
            step_fn([batch], step)
        return ({k: v.detach().clone() for k, v in base.unet.state_dict().items()},
                ctx.lr_scheduler.get_last_lr())
    finally:
        AcceleratorState._reset_state(True)


def _names():
    from trainer.config.block_lr import BLOCK_NAMES

    return BLOCK_NAMES


# ---- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,words", [
    (text([1e-6] * 22), "22 values given, the SDXL U-Net has 23 blocks"),
    (text([1e-6] * 22) + ",fast", "'fast' is not a number"),
    (text([1e-6] * 22) + ",-1e-6", "out=-1e-06: a learning rate is 0 (block frozen) or above"),
    (text([0.0] * 23), "every block_lr value is 0, so nothing would train"),
])
def test_a_wrong_block_lr_is_one_clear_error_on_its_field(value, words):
    _, problems = tc.validate_values("dreambooth", {"sdxl": True, "learning_rate_te": 0.0, "block_lr": value})
    assert [(p.field, p.level) for p in problems] == [("block_lr", "error")]
    assert words in problems[0].message


@pytest.mark.parametrize("flag,family", [("v2", "SD2.x"), ("flux1_checkbox", "FLUX.1"), ("sd3_checkbox", "SD3")])
def test_block_lr_for_another_model_family_is_refused(flag, family):
    _, problems = tc.validate_values("finetune", {flag: True, "block_lr": text(rates())})
    assert any(p.field == "block_lr" and family in p.message and "sdxl_train.py" in p.message for p in problems)


def test_all_zero_blocks_are_fine_while_the_text_encoders_train():
    config = tc.parse_config("dreambooth", {"sdxl": True, "learning_rate_te": 1e-6, "block_lr": text([0] * 23)})
    assert config.block_lr.count(",") == 22


def test_adafactor_finding_its_own_step_size_is_a_warning():
    _, problems = tc.validate_values("finetune", {"optimizer": "Adafactor", "block_lr": text(rates())})
    assert [(p.field, p.level) for p in problems] == [("block_lr", "warning")]
    assert "relative_step=False" in problems[0].message
    _, problems = tc.validate_values("finetune", {"optimizer": "Adafactor", "block_lr": text(rates()),
                                                  "optimizer_args": "relative_step=False scale_parameter=False"})
    assert problems == []


def test_a_toml_list_of_rates_is_the_same_option():
    config = tc.parse_config("finetune", {"block_lr": rates()})
    assert config.block_lr == text(rates())


def test_block_lr_is_an_option_of_the_full_training_types_only():
    assert "block_lr" in tc.DreamboothConfig.model_fields and "block_lr" in tc.FinetuneConfig.model_fields
    assert "block_lr" not in tc.LoraConfig.model_fields
    assert "block_lr" not in tc.TextualInversionConfig.model_fields


# ---- Kohya_ss JSON and sd-scripts ------------------------------------------------------------------

PRESET = "tests/data/kohya_presets/finetune_sdxl_ai_now_pagedadamw8bit_v1.0.json"


def test_a_kohya_ss_sdxl_finetune_json_brings_its_block_lr(tmp_path):
    data = {**json.load(open(PRESET)), "block_lr": text(rates())}
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert loaded.config.block_lr == text(rates())
    assert not any("block_lr" in key for key in loaded.ignored_keys)


def test_a_non_sdxl_kohya_ss_json_drops_block_lr_with_a_note(tmp_path):
    data = {**json.load(open(PRESET)), "block_lr": text(rates()), "sdxl_checkbox": False, "sdxl": False}
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(data))
    loaded = tc.load_config_file(path)
    assert loaded.config.block_lr == ""
    assert any("block_lr" in n and "sdxl_train.py" in n for n in loaded.notes)


def test_the_sd_scripts_export_writes_block_lr_for_sdxl_train_py():
    config = tc.FinetuneConfig(sdxl=True, block_lr=" " + text(rates()).replace(",", ", "))
    export = sd_scripts_export(config)
    assert export.script == "sdxl_train.py" and export.toml_data["block_lr"] == text(rates())
    sd1 = sd_scripts_export(tc.DreamboothConfig(block_lr=text(rates()), learning_rate_te=0.0))
    assert "block_lr" not in sd1.toml_data and any("train_db.py has no such option" in n for n in sd1.notes)


def test_a_whole_sdxl_dreambooth_run_with_block_lr_saves_a_checkpoint_and_learning_rate_0_keeps_the_unet(
        tmp_path, tiny_model_dir):
    """Through `python -m trainer run`: the rates reach the run; learning_rate 0 (text encoder only) leaves the
    U-Net untrained even with block_lr, as sd-scripts' train_unet = learning_rate != 0."""
    from test_kinds_end_to_end import run, make_images

    data = make_images(tmp_path / "img" / "2_sks toy")
    values = dict(pretrained_model_name_or_path=str(tiny_model_dir("sdxl")), train_data_dir=str(data.parent),
                  output_name="db", epoch=1, block_lr=text(rates()))
    events = run("dreambooth", {**values, "output_dir": str(tmp_path / "out"), "learning_rate": 1e-4,
                                "learning_rate_te": 0.0}, tmp_path)
    assert [e["kind"] for e in events if e["type"] == "saved"] == ["final"]
    events = run("dreambooth", {**values, "output_dir": str(tmp_path / "te"), "learning_rate": 0.0,
                                "learning_rate_te": 1e-5}, tmp_path)
    assert any("block_lr is not used" in e.get("message", "") for e in events if e["type"] == "warning")
