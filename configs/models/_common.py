"""What both generator scripts share: where the folders go, how a config is written, CLIP's text-encoder
config and the word list the tiny tokenizers learn from."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent

WORDS = ("a an the of and with in on at photo picture painting drawing portrait style sks ohwx dog cat man woman "
         "person girl boy 1girl 1boy solo smiling smile looking at viewer masterpiece best quality high low lowres "
         "bad hands blurry red blue green yellow black white hair eyes sky tree house city street night day light "
         "outdoors indoors standing sitting full body upper close up simple background detailed realistic anime art "
         "by artist cute beautiful wearing dress shirt hat glasses flower forest mountain water ocean beach snow").split()


def dump(p, d):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(d, indent=2) + "\n")


def clip_cfg(arch="CLIPTextModel", **kw):
    """CLIP ViT-L/14's text encoder (SD1, SDXL's first, FLUX's and SD3's CLIP-L); keywords change it."""
    base = {"architectures": [arch], "model_type": "clip_text_model", "attention_dropout": 0.0,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_act": "quick_gelu", "hidden_size": 768,
            "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
            "vocab_size": 49408, "torch_dtype": "float32"}
    base.update(kw); return base
