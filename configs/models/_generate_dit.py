"""Regenerates the DiT config folders in configs/models/ (run: python configs/models/_generate_dit.py).

Full-size folders hold the public diffusers configs (no weights) of FLUX.1 dev/schnell and SD3.5
Medium/Large; tiny folders
define the test architectures used by trainer.models.tiny_dit: the real block structure (double and
single stream blocks, 16-channel VAE, CLIP-L + T5 encoder) at tiny widths, with a CLIP BPE and a T5
tokenizer generated offline."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trainer.models.clip_bpe import learn_merges, write_tokenizer_folder
from trainer.models.t5_tokenizer import write_t5_tokenizer
from _common import ROOT, WORDS, clip_cfg, dump


def t5_cfg(**kw):
    base = {"architectures": ["T5EncoderModel"], "model_type": "t5", "d_ff": 10240, "d_kv": 64, "d_model": 4096,
            "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
            "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
            "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "pad_token_id": 0,
            "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
            "tie_word_embeddings": False, "vocab_size": 32128, "torch_dtype": "float32"}
    base.update(kw); return base


def ae_cfg(**kw):
    base = {"_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": 3, "out_channels": 3, "latent_channels": 16,
            "layers_per_block": 2, "norm_num_groups": 32, "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "mid_block_add_attention": True, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
            "force_upcast": True, "use_quant_conv": False, "use_post_quant_conv": False}
    base.update(kw); return base


def flux_cfg(**kw):
    base = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": 19,
            "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
    base.update(kw); return base


FLUX_INDEX = {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
              "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
              "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
SCHED_DEV = {"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
             "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": True}
SCHED_SCHNELL = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                 "use_dynamic_shifting": False}
REAL_TOKENIZERS = {"tokenizer": {"source": "openai/clip-vit-large-patch14", "pad_token": "<|endoftext|>"},
                   "tokenizer_2": {"source": "google/t5-v1_1-xxl", "kind": "t5"}}


def write_dit(name, info, index, parts, sched, tokenizers=None):
    d = ROOT / name
    dump(d / "architecture.json", info)
    dump(d / "model_index.json", index)
    for sub, cfg in parts.items():
        dump(d / sub / "config.json", cfg)
    dump(d / "scheduler" / "scheduler_config.json", sched)
    for sub, make in (tokenizers or {}).items():
        make(d / sub)


# ---- full-size public architectures (configs only)
for variant, sched, guidance in (("dev", SCHED_DEV, True), ("schnell", SCHED_SCHNELL, False)):
    write_dit(f"flux-{variant}", {"family": "flux", "variant": variant, "prediction_type": "flow",
                                  "description": f"FLUX.1 [{variant}] (configs of black-forest-labs/FLUX.1-{variant})",
                                  "tokenizers": REAL_TOKENIZERS},
              FLUX_INDEX, {"transformer": flux_cfg(guidance_embeds=guidance), "vae": ae_cfg(),
                           "text_encoder": clip_cfg(), "text_encoder_2": t5_cfg()}, sched)

# ---- tiny architectures for tests: real block structure, tiny widths
merges = learn_merges(WORDS, 400)
tiny_clip = clip_cfg(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                     projection_dim=32, vocab_size=512 + len(merges) + 2)
t5_vocab = 3 + len(dict.fromkeys(WORDS)) + 64  # specials + words + characters (upper bound, see t5_tokenizer)
tiny_t5 = t5_cfg(d_ff=64, d_kv=8, d_model=32, num_heads=4, num_layers=2, num_decoder_layers=2,
                 relative_attention_max_distance=16, relative_attention_num_buckets=8, vocab_size=t5_vocab)
tiny_ae = ae_cfg(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=16, sample_size=64)
note = "Tiny random-weight test model: real block structure, tiny widths (trainer.models.tiny_dit)."
write_dit("tiny-flux", {"family": "flux", "variant": "dev", "prediction_type": "flow", "tiny": True,
                        "description": "tiny FLUX.1-shaped test model (dev: guidance embedding) " + note},
          FLUX_INDEX, {"transformer": flux_cfg(num_layers=2, num_single_layers=2, attention_head_dim=8,
                                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                               axes_dims_rope=[2, 2, 4]),
                       "vae": tiny_ae, "text_encoder": tiny_clip, "text_encoder_2": tiny_t5}, SCHED_DEV,
          {"tokenizer": lambda p: write_tokenizer_folder(merges, p), "tokenizer_2": lambda p: write_t5_tokenizer(WORDS, p)})

# ---- SD3.5 (MMDiT; Medium is MMDiT-X: a second image attention in the first 13 blocks)
def sd3_cfg(**kw):
    base = {"_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
            "num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
            "pos_embed_max_size": 384, "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}
    base.update(kw); return base


SD3_INDEX = {"_class_name": "StableDiffusion3Pipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "tokenizer_3": ["transformers", "T5TokenizerFast"],
             "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
SCHED_SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
SD3_TOKENIZERS = {"tokenizer": {"source": "openai/clip-vit-large-patch14", "pad_token": "<|endoftext|>"},
                  "tokenizer_2": {"source": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "pad_token": "!"},
                  "tokenizer_3": {"source": "google/t5-v1_1-xxl", "kind": "t5"}}
clip_l_proj = clip_cfg(architectures=["CLIPTextModelWithProjection"])
clip_g = clip_cfg(architectures=["CLIPTextModelWithProjection"], hidden_act="gelu", hidden_size=1280,
                  intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280)
sd3_vae = ae_cfg(scaling_factor=1.5305, shift_factor=0.0609)
for name, variant, tr in (("sd35-medium", "medium", sd3_cfg()),
                          ("sd35-large", "large", sd3_cfg(num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                                                          pos_embed_max_size=192, dual_attention_layers=[]))):
    write_dit(name, {"family": "sd3", "variant": variant, "prediction_type": "flow",
                     "description": f"Stable Diffusion 3.5 {variant.capitalize()} (configs of stabilityai/stable-diffusion-3.5-{variant})",
                     "tokenizers": SD3_TOKENIZERS},
              SD3_INDEX, {"transformer": tr, "vae": sd3_vae, "text_encoder": clip_l_proj, "text_encoder_2": clip_g,
                          "text_encoder_3": t5_cfg()}, SCHED_SD3)
tiny_sd3_t5 = {**tiny_t5, "d_model": 64, "d_ff": 96}
write_dit("tiny-sd3", {"family": "sd3", "variant": "medium", "prediction_type": "flow", "tiny": True,
                       "description": "tiny SD3.5-Medium-shaped test model (MMDiT-X block 0, qk RMS norm) " + note},
          SD3_INDEX, {"transformer": sd3_cfg(sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                             joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=48,
                                             pos_embed_max_size=16, dual_attention_layers=[0]),
                      "vae": {**tiny_ae, "scaling_factor": 1.5305, "shift_factor": 0.0609},
                      "text_encoder": {**tiny_clip, "architectures": ["CLIPTextModelWithProjection"], "hidden_size": 16,
                                       "intermediate_size": 32, "num_attention_heads": 2, "projection_dim": 16},
                      "text_encoder_2": {**tiny_clip, "architectures": ["CLIPTextModelWithProjection"],
                                         "hidden_act": "gelu", "projection_dim": 32},
                      "text_encoder_3": tiny_sd3_t5}, SCHED_SD3,
          {"tokenizer": lambda p: write_tokenizer_folder(merges, p),
           "tokenizer_2": lambda p: write_tokenizer_folder(merges, p, pad_token="!"),
           "tokenizer_3": lambda p: write_t5_tokenizer(WORDS, p)})
# ---- Chroma (lodestones/Chroma: FLUX.1-schnell-derived, per-block modulation replaced by one approximator
# network, distilled_guidance_layer; T5-XXL only, no CLIP-L; ChromaPipeline's folder layout)
def chroma_cfg(**kw):
    base = {"_class_name": "ChromaTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": 19,
            "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "axes_dims_rope": [16, 56, 56], "approximator_num_channels": 64, "approximator_hidden_dim": 5120,
            "approximator_layers": 5}
    base.update(kw); return base


CHROMA_INDEX = {"_class_name": "ChromaPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
                "transformer": ["diffusers", "ChromaTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
                "image_encoder": [None, None], "feature_extractor": [None, None]}
write_dit("chroma", {"family": "chroma", "variant": "chroma", "prediction_type": "flow",
                     "description": "Chroma (configs of lodestones/Chroma1-HD)",
                     "tokenizers": {"tokenizer": {"source": "google/t5-v1_1-xxl", "kind": "t5"}}},
          CHROMA_INDEX, {"transformer": chroma_cfg(), "vae": ae_cfg(), "text_encoder": t5_cfg()}, SCHED_DEV)
write_dit("tiny-chroma", {"family": "chroma", "variant": "chroma", "prediction_type": "flow", "tiny": True,
                          "description": "tiny Chroma-shaped test model (approximator, T5 only) " + note},
          CHROMA_INDEX, {"transformer": chroma_cfg(num_layers=2, num_single_layers=2, attention_head_dim=8,
                                                   num_attention_heads=2, joint_attention_dim=32,
                                                   axes_dims_rope=[2, 2, 4], approximator_num_channels=16,
                                                   approximator_hidden_dim=32, approximator_layers=2),
                         "vae": tiny_ae, "text_encoder": tiny_t5}, SCHED_DEV,
          {"tokenizer": lambda p: write_t5_tokenizer(WORDS, p)})
print("ok")
