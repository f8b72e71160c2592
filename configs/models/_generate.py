"""Regenerates the config folders in configs/models/ (run: python configs/models/_generate.py).

Full-size folders hold the public diffusers configs of SD1.5, SD2.1 and SDXL base 1.0 (configs only, no
weights). Tiny folders define the test architectures used by trainer.models.tiny, including a small CLIP
BPE vocabulary learned deterministically from a fixed word list."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trainer.models.clip_bpe import learn_merges, write_tokenizer_folder
from _common import ROOT, WORDS, clip_cfg as te_cfg, dump

def unet_cfg(**kw):
    base = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "center_input_sample": False,
            "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
            "out_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
            "norm_num_groups": 32, "dual_cross_attention": False, "only_cross_attention": False,
            "num_class_embeds": None, "use_linear_projection": False, "upcast_attention": False}
    base.update(kw); return base

def vae_cfg(**kw):
    base = {"_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": 3, "out_channels": 3,
            "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "sample_size": 512, "scaling_factor": 0.18215, "force_upcast": True}
    base.update(kw); return base

SCHED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
         "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
         "trained_betas": None}

def sd_index(sched_cls, xl=False):
    if xl:
        return {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                "scheduler": ["diffusers", sched_cls], "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    return {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
            "feature_extractor": [None, None], "safety_checker": [None, None],
            "scheduler": ["diffusers", sched_cls], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}

def write_arch(name, info, index, unet, vae, tes, sched_cls, sched, tokenizers=None):
    d = ROOT / name
    dump(d / "architecture.json", info)
    dump(d / "model_index.json", index)
    dump(d / "unet" / "config.json", unet)
    dump(d / "vae" / "config.json", vae)
    for sub, cfg in tes.items():
        dump(d / sub / "config.json", cfg)
    dump(d / "scheduler" / "scheduler_config.json", {"_class_name": sched_cls, **sched})
    for sub, (merges, pad) in (tokenizers or {}).items():
        write_tokenizer_folder(merges, d / sub, pad_token=pad)

SD1_BLOCKS = dict(down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
XL_BLOCKS = dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])

# ---- full-size public architectures (configs only; tokenizers are built offline at load time)
write_arch("sd15", {"family": "sd1", "prediction_type": "epsilon", "description": "Stable Diffusion 1.x (configs of stable-diffusion-v1-5)",
                    "tokenizers": {"tokenizer": {"source": "openai/clip-vit-large-patch14", "pad_token": "<|endoftext|>"}}},
           sd_index("PNDMScheduler"),
           unet_cfg(attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, sample_size=64, **SD1_BLOCKS),
           vae_cfg(force_upcast=True), {"text_encoder": te_cfg()}, "PNDMScheduler", {**SCHED, "prediction_type": "epsilon"})
write_arch("sd21", {"family": "sd2", "prediction_type": "v_prediction", "description": "Stable Diffusion 2.x (configs of stable-diffusion-2-1; 2.x-base models are epsilon)",
                    "tokenizers": {"tokenizer": {"source": "stabilityai/stable-diffusion-2", "pad_token": "!"}}},
           sd_index("DDIMScheduler"),
           unet_cfg(attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=1024,
                    sample_size=96, use_linear_projection=True, upcast_attention=True, **SD1_BLOCKS),
           vae_cfg(sample_size=768),
           {"text_encoder": te_cfg(hidden_act="gelu", hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                   num_hidden_layers=23, projection_dim=512)},
           "DDIMScheduler", {**SCHED, "prediction_type": "v_prediction"})
write_arch("sdxl-base", {"family": "sdxl", "prediction_type": "epsilon", "description": "Stable Diffusion XL base 1.0",
                         "tokenizers": {"tokenizer": {"source": "openai/clip-vit-large-patch14", "pad_token": "<|endoftext|>"},
                                        "tokenizer_2": {"source": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "pad_token": "!"}}},
           sd_index("EulerDiscreteScheduler", xl=True),
           unet_cfg(addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
                    block_out_channels=[320, 640, 1280], cross_attention_dim=2048, projection_class_embeddings_input_dim=2816,
                    sample_size=128, transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, **XL_BLOCKS),
           vae_cfg(sample_size=1024, scaling_factor=0.13025),
           {"text_encoder": te_cfg(), "text_encoder_2": te_cfg("CLIPTextModelWithProjection", hidden_act="gelu", hidden_size=1280,
                                                              intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280)},
           "EulerDiscreteScheduler", {**SCHED, "prediction_type": "epsilon", "interpolation_type": "linear", "sample_max_value": 1.0,
                                      "timestep_spacing": "leading", "use_karras_sigmas": False})

# ---- tiny architectures for tests and the demo: same block structure, tiny widths
merges = learn_merges(WORDS, 400)
tiny_te = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3, projection_dim=32,
               vocab_size=512 + len(merges) + 2)
tiny_vae = vae_cfg(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=16, sample_size=64)
tiny_unet = dict(block_out_channels=[32, 32, 64, 64], norm_num_groups=32, sample_size=8)
note = "Tiny random-weight test model: real block structure, tiny widths (trainer.models.tiny)."
write_arch("tiny-sd1", {"family": "sd1", "prediction_type": "epsilon", "tiny": True, "description": "tiny SD1.x-shaped test model " + note},
           sd_index("PNDMScheduler"), unet_cfg(attention_head_dim=8, cross_attention_dim=32, **tiny_unet, **SD1_BLOCKS),
           tiny_vae, {"text_encoder": te_cfg(**tiny_te)}, "PNDMScheduler", {**SCHED, "prediction_type": "epsilon"},
           {"tokenizer": (merges, "<|endoftext|>")})
write_arch("tiny-sd2", {"family": "sd2", "prediction_type": "v_prediction", "tiny": True, "description": "tiny SD2.x-shaped (v-prediction) test model " + note},
           sd_index("DDIMScheduler"), unet_cfg(attention_head_dim=[2, 2, 4, 4], cross_attention_dim=32, use_linear_projection=True,
                                               upcast_attention=True, **tiny_unet, **SD1_BLOCKS),
           {**tiny_vae, "sample_size": 64}, {"text_encoder": te_cfg(hidden_act="gelu", **tiny_te)},
           "DDIMScheduler", {**SCHED, "prediction_type": "v_prediction"}, {"tokenizer": (merges, "!")})
write_arch("tiny-sdxl", {"family": "sdxl", "prediction_type": "epsilon", "tiny": True, "description": "tiny SDXL-shaped test model " + note},
           sd_index("EulerDiscreteScheduler", xl=True),
           unet_cfg(addition_embed_type="text_time", addition_time_embed_dim=8, attention_head_dim=[2, 4, 4],
                    block_out_channels=[32, 64, 64], cross_attention_dim=32 + 48, projection_class_embeddings_input_dim=6 * 8 + 48,
                    sample_size=8, transformer_layers_per_block=[1, 1, 2], use_linear_projection=True, **XL_BLOCKS),
           {**tiny_vae, "scaling_factor": 0.13025},
           {"text_encoder": te_cfg(**tiny_te), "text_encoder_2": te_cfg("CLIPTextModelWithProjection", hidden_act="gelu",
                                                  **{**tiny_te, "hidden_size": 48, "intermediate_size": 96, "projection_dim": 48})},
           "EulerDiscreteScheduler", {**SCHED, "prediction_type": "epsilon", "interpolation_type": "linear", "sample_max_value": 1.0,
                                      "timestep_spacing": "leading", "use_karras_sigmas": False},
           {"tokenizer": (merges, "<|endoftext|>"), "tokenizer_2": (merges, "!")})
print("ok", len(merges))
