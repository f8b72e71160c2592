"""Tiny, generated captioning models with the real interfaces, for tests and demos without downloads.

* `make_probe_tagger`: an ONNX tagger whose "probabilities" are its input's per-channel means and
  top-left pixel (divided by 255), so the preprocessing can be checked numerically.
* `make_color_tagger`: an ONNX tagger whose probabilities are a fixed function of the image colour:
  a pure red image gives each tag its `p_red`, a pure blue one its `p_blue`.
* `make_tiny_blip` / `make_tiny_blip2`: randomly initialised BLIP / BLIP-2 folders (save_pretrained).
Needs the `onnx` package (a test dependency) for the taggers.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

RATINGS = ("general", "sensitive", "questionable", "explicit")
PROBE_TAGS = ["mean_b", "mean_g", "mean_r", "corner_b", "corner_g", "corner_r"]


def write_tags_csv(path: Path, tags: list[tuple[str, int]]) -> None:
    """selected_tags.csv with the real header; rows in model-output order."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(tags):
            w.writerow([9999999 - i if cat == 9 else 1000 + i, name, cat, 1000 - i])


def _save(graph, folder: Path, opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def _io(size: int, n_out: int, batch: int | None, input_name: str, output_name: str):
    from onnx import TensorProto, helper

    b = batch if batch else "batch"
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [b, size, size, 3])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [b, n_out])
    return x, y


def _const(name: str, arr) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr), name)


def make_probe_tagger(
    folder: str | os.PathLike, size: int = 16, batch: int | None = None, input_name: str = "input_1:0"
) -> Path:
    """Outputs [mean B, mean G, mean R, corner B, corner G, corner R] / 255 for each NHWC input."""
    from onnx import helper

    folder = Path(folder)
    x, y = _io(size, 6, batch, input_name, "predictions_sigmoid")
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("Slice", [input_name, "s0", "s1", "ax"], ["corner4d"]),
        helper.make_node("Flatten", ["corner4d"], ["corner"], axis=1),
        helper.make_node("Concat", ["means", "corner"], ["both"], axis=1),
        helper.make_node("Mul", ["both", "inv255"], ["predictions_sigmoid"]),
    ]
    inits = [
        _const("s0", np.array([0, 0], np.int64)),
        _const("s1", np.array([1, 1], np.int64)),
        _const("ax", np.array([1, 2], np.int64)),
        _const("inv255", np.array(1 / 255, np.float32)),
    ]
    _save(helper.make_graph(nodes, "probe_tagger", [x], [y], inits), folder)
    write_tags_csv(folder / "selected_tags.csv", [(n, 0) for n in PROBE_TAGS])
    return folder


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def make_color_tagger(
    folder: str | os.PathLike,
    tags: list[tuple[str, int, float, float]],
    size: int = 8,
    batch: int | None = None,
    input_name: str = "input_1:0",
) -> Path:
    """tags: (name, category, p_red, p_blue). probs = sigmoid(mean_BGR/255 @ W), so a pure red image
    scores logit(p_red) per tag, a pure blue image logit(p_blue); other colours mix the two."""
    from onnx import helper

    folder = Path(folder)
    w = np.zeros((3, len(tags)), np.float32)
    for j, (_, _, p_red, p_blue) in enumerate(tags):
        w[0, j], w[2, j] = _logit(p_blue), _logit(p_red)  # row 0 = B, row 2 = R (BGR input)
    x, y = _io(size, len(tags), batch, input_name, "output")
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["means", "inv255"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    inits = [_const("inv255", np.array(1 / 255, np.float32)), _const("W", w)]
    _save(helper.make_graph(nodes, "color_tagger", [x], [y], inits), folder)
    write_tags_csv(folder / "selected_tags.csv", [(n, c) for n, c, _, _ in tags])
    return folder


# ---------------------------------------------------------------------------------------------
# BLIP / BLIP-2

_WORDS = (
    "a an the of in on with and photo picture painting drawing girl boy man woman cat dog red blue "
    "green white black sitting standing holding looking smiling tree house sky street room table "
    "chair hair dress shirt hat long short city field water beach mountain flower car".split()
)


def _bert_tokenizer():
    """A WordPiece tokenizer over a small generated vocabulary (BLIP's own tokenizer is BERT's)."""
    import tempfile

    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + _WORDS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tok = BertTokenizer(str(path), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def make_tiny_blip(folder: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised BlipForConditionalGeneration + BlipProcessor in `folder`."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    tok = _bert_tokenizer()
    ids = tok.convert_tokens_to_ids
    text = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=128, encoder_hidden_size=32,
        bos_token_id=ids("[DEC]"), pad_token_id=ids("[PAD]"), sep_token_id=ids("[SEP]"), eos_token_id=ids("[SEP]"),
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=image_size, patch_size=16,
    )  # fmt: skip
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tok
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_tiny_blip2(folder: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised Blip2ForConditionalGeneration (OPT decoder) + Blip2Processor in `folder`."""
    import torch
    from transformers import (
        BlipImageProcessor,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        OPTConfig,
    )

    folder = Path(folder)
    tok = _bert_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ids = tok.convert_tokens_to_ids
    num_query = 4
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=image_size, patch_size=16,
    )  # fmt: skip
    qformer = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        encoder_hidden_size=32, max_position_embeddings=64,
    )  # fmt: skip
    opt = OPTConfig(
        vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
        word_embed_proj_dim=32, max_position_embeddings=128,
        bos_token_id=ids("[CLS]"), eos_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"),
    )  # fmt: skip
    config = Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=opt.to_dict(), num_query_tokens=num_query,
        image_token_index=ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    # Random weights can make greedy decoding repeat a special token, which decodes to "". Zero logits
    # for the special tokens (output rows) so words win; a trained checkpoint needs no such help.
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]", "<image>"):
            head[ids(t)] = 0
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tok,
        num_query_tokens=num_query,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_tiny_git(folder: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised GitForCausalLM + GitProcessor (CLIP image processor, BERT tokenizer)."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    folder = Path(folder)
    tok = _bert_tokenizer()
    ids = tok.convert_tokens_to_ids
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=16)
    config = GitConfig(vision_config=vision, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
                       bos_token_id=ids("[CLS]"), eos_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"))
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()
    with torch.no_grad():  # as for BLIP-2: let words, not special tokens, win greedy decoding
        head = model.get_output_embeddings().weight
        for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]"):
            head[ids(t)] = 0
    size = {"shortest_edge": image_size}
    processor = GitProcessor(image_processor=CLIPImageProcessor(size=size, crop_size=image_size), tokenizer=tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
