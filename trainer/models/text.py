"""Prompt tokenization and text-encoder conditioning, as Kohya's trainers compute them.

* SD1/SD2: last hidden state, or with ``clip_skip`` N the N-th hidden state from the end passed
  through the final layer norm.
* SDXL: text encoder 1's penultimate hidden state (index 11 of CLIP-L's 13) concatenated with text
  encoder 2's penultimate hidden state (no final norm), plus TE2's projected pooled output at the
  first EOS token; ``clip_skip`` does not apply.
* ``max_token_length`` 150/225: the caption is cut into 75-token chunks, each wrapped in BOS/EOS and
  encoded separately; the chunk outputs are joined keeping one BOS and one EOS (length n*75+2).
* weighted captions (``(red:1.2)``, trainer/prompt_weights.py): the encoder reads the text without the syntax;
  each token's hidden state is scaled by its weight and the caption's mean restored (weight_tokens).
"""

from __future__ import annotations

import logging

import torch

from trainer.models.dit import dit_family
from trainer.prompt_weights import parse_weights

log = logging.getLogger(__name__)
CHUNK_IDS = 77  # BOS + 75 tokens + EOS
MEAN_EPS = 1e-3  # weight_tokens: a caption's mean under this share of its mean magnitude counts as 0


def tokenize_long(tokenizer, captions: list[str], max_token_length: int | None = 75) -> torch.Tensor:
    """input_ids [B, n_chunks * 77] with n_chunks = max_token_length / 75 (None -> 75 -> one chunk)."""
    total = _total_length(max_token_length)
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=total,
                    return_tensors="pt").input_ids
    return _chunked(tokenizer, ids)


def batch_padded_length(ids: torch.Tensor, eos_token_id: int) -> int:
    """The length `tokenizer(captions, padding=True, truncation=True)` gives a batch (sd-scripts' no_token_padding):
    BOS, the longest caption's tokens and its EOS, at most 77. `ids`: the batch padded to 77 [B, 77]."""
    return int((ids == eos_token_id).int().argmax(dim=1).max()) + 1


def tokenize_weighted(tokenizer, captions: list[str], max_token_length: int | None = 75
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted captions ("(red:1.2) hat"): the ids of the text without the syntax, laid out as tokenize_long's,
    and a weight per position [B, max_token_length + 2] lined up with the joined conditioning (BOS, 75 x n, last).
    Each weighted run is tokenized alone (as sd-scripts does), so a weight never spills onto its neighbours' tokens;
    BOS, EOS and padding weigh 1."""
    total = _total_length(max_token_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows, weight_rows = [], []
    for caption in captions:
        tokens, weights = [], []
        for text, weight in parse_weights(caption):
            ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids if text else []
            tokens += ids
            weights += [weight] * len(ids)
        tokens, weights = tokens[:total - 2], weights[:total - 2]  # truncation keeps the first tokens
        rows.append([bos, *tokens, eos] + [pad] * (total - 2 - len(tokens)))
        weight_rows.append([1.0, *weights] + [1.0] * (total - 1 - len(weights)))
    return _chunked(tokenizer, torch.tensor(rows, dtype=torch.long)), torch.tensor(weight_rows)


def _total_length(max_token_length: int | None) -> int:
    max_token_length = int(max_token_length or 75)
    if max_token_length not in (75, 150, 225):
        raise ValueError(f"max_token_length {max_token_length} must be 75, 150 or 225")
    return max_token_length + 2


def _chunked(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """[B, BOS + n*75 + EOS/PAD] -> [B, n * 77]: each 75-token piece wrapped in its own BOS ... EOS."""
    model_max = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if model_max > 1000:  # a tokenizer saved without its limit reports a huge sentinel
        model_max = 77
    body = model_max - 2  # 75 tokens between BOS and EOS
    total = ids.shape[1]
    if total <= model_max:
        return ids
    pad_is_eos = tokenizer.pad_token_id == tokenizer.eos_token_id
    chunks = []
    for start in range(1, total - model_max + 2, body):
        chunk = torch.cat([ids[:, :1], ids[:, start:start + body], ids[:, -1:]], dim=1)
        if not pad_is_eos:  # SD2 / SDXL tokenizers pad with "!": keep every chunk ending in EOS
            last_real = (chunk[:, -2] != tokenizer.eos_token_id) & (chunk[:, -2] != tokenizer.pad_token_id)
            chunk[last_real, -1] = tokenizer.eos_token_id
            empty = chunk[:, 1] == tokenizer.pad_token_id  # BOS PAD ... -> BOS EOS PAD ...
            chunk[empty, 1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return torch.cat(chunks, dim=1)


def tokenize_prompt(base_or_tokenizers, captions: list[str] | str, max_token_length: int | None = None) -> list[torch.Tensor]:
    """Input ids per text encoder: ``(b, 77)``, or ``(b, n, 77)`` when ``max_token_length`` is 150/225."""
    tokenizers = getattr(base_or_tokenizers, "tokenizers", base_or_tokenizers)
    captions = [captions] if isinstance(captions, str) else list(captions)
    out = []
    for tok in tokenizers:
        ids = tokenize_long(tok, captions, max_token_length)
        n = ids.shape[1] // CHUNK_IDS
        out.append(ids if n == 1 else ids.view(ids.shape[0], n, CHUNK_IDS))
    return out


def encode_prompt(base, input_ids_per_encoder: list[torch.Tensor], clip_skip: int | None = None,
                  token_weights: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(encoder_hidden_states, pooled)``; pooled (SDXL ``text_embeds``) is None for SD1/SD2.
    ``token_weights`` (weighted captions, one [B, L] per encoder from tokenize_weighted) scale each encoder's
    hidden states by token (weight_tokens); the pooled embedding stays unweighted, as in sd-scripts.
    DiT families encode through their own text module (trainer/models/dit.py)."""
    dit = dit_family(base.family)
    if dit is not None:
        if token_weights is not None:
            raise ValueError(f"weighted captions are not supported for {base.family} (SD1, SD2 and SDXL only)")
        return dit.module("text").encode(base, input_ids_per_encoder, clip_skip)
    if input_ids_per_encoder[0].ndim == 2 and input_ids_per_encoder[0].shape[1] > CHUNK_IDS:
        b = input_ids_per_encoder[0].shape[0]  # flat [B, n*77] from tokenize_long
        input_ids_per_encoder = [ids.view(b, -1, CHUNK_IDS) for ids in input_ids_per_encoder]
    weights = list(token_weights) if token_weights is not None else [None] * len(input_ids_per_encoder)
    encoders = base.text_encoders
    if base.family == "sdxl":
        if clip_skip and clip_skip > 1:
            log.warning("clip_skip is ignored for SDXL (it always uses the penultimate layers)")
        h1, _ = _encode(encoders[0], input_ids_per_encoder[0], hidden_index=-2, final_norm=False)
        h2, pooled = _encode(encoders[1], input_ids_per_encoder[1], hidden_index=-2, final_norm=False,
                             eos_token_id=base.tokenizers[1].eos_token_id)
        h1, h2 = weight_tokens(h1, weights[0]), weight_tokens(h2, weights[1])
        return torch.cat([h1, h2.to(h1.dtype)], dim=-1), pooled
    index = -clip_skip if clip_skip and clip_skip > 1 else None
    hidden, _ = _encode(encoders[0], input_ids_per_encoder[0], hidden_index=index, final_norm=True)
    return weight_tokens(hidden, weights[0]), None


def weight_tokens(hidden: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Each token's hidden state times its weight, then the whole scaled back to the unweighted mean.

    sd-scripts' get_weighted_text_embeddings (and A1111): the mean over tokens and channels of each caption,
    taken in fp32, is restored, so weights shift emphasis between tokens rather than the conditioning's overall
    level. (sd-scripts' newer strategy classes multiply without restoring the mean.)
    A batch whose weights are all 1 is returned as it is: the same values, and, with a training text encoder,
    the same gradients bit for bit (the mean ratio's backward would add rounding noise).

    Guards sd-scripts lacks, for a mean near 0 (random tiny models whose final layer norm has no bias, a drifting
    text-encoder LoRA), where the ratio of two near-zero means would be noise with a huge gradient, a huge or
    sign-flipping factor and soon NaN losses: a mean under 1e-3 of the states' mean magnitude is left alone
    (factor 1), and the factor is held between 1/max(weight) and 1/min(weight), the range it has whenever the
    states share a sign (BOS, EOS and padding weigh 1, so the range holds 1). Trained CLIP encoders, whose
    states have a clear mean, are not expected to meet either."""
    if weights is None or (weights.device.type == "cpu" and bool((weights == 1).all())):
        return hidden  # (weights already on a GPU, e.g. a CUDA graph's inputs, are not read back: no sync)
    weights = weights.to(hidden.device, hidden.dtype)
    weighted = hidden * weights.unsqueeze(-1)
    before = hidden.float().mean(dim=(-2, -1))
    after = weighted.float().mean(dim=(-2, -1))
    scale = before / torch.where(after != 0, after, torch.ones_like(after))
    negligible = before.abs() < MEAN_EPS * hidden.float().abs().mean(dim=(-2, -1))
    scale = torch.where(negligible | (after == 0), torch.ones_like(scale), scale)
    w = weights.float()
    low = 1 / w.amax(dim=-1)  # max >= 1 (BOS)
    high = torch.where(w.amin(dim=-1) > 0, 1 / w.amin(dim=-1), torch.full_like(low, torch.inf))
    scale = torch.minimum(torch.maximum(scale, low), high).to(hidden.dtype)
    return weighted * scale[:, None, None]


def family_tokenize(base, cfg):
    """captions → ids for a DiT family (its own tokenization), None for the SD families."""
    dit = dit_family(base.family)
    if dit is None:
        return None
    text = dit.module("text")
    return lambda captions: text.tokenize(base, captions, cfg)


def _encode(encoder, input_ids: torch.Tensor, *, hidden_index: int | None, final_norm: bool,
            eos_token_id: int | None = None):
    device = next(encoder.parameters()).device
    batch = input_ids.shape[0]
    n_chunks = input_ids.shape[1] if input_ids.ndim == 3 else 1
    flat = input_ids.reshape(-1, input_ids.shape[-1]).to(device)
    out = encoder(flat, output_hidden_states=True, return_dict=True)
    text_model = getattr(encoder, "text_model", encoder)
    if hidden_index is None:
        hidden = out.last_hidden_state
    else:
        hidden = out.hidden_states[hidden_index]
        if final_norm:
            hidden = text_model.final_layer_norm(hidden)
    pooled = None
    if eos_token_id is not None:
        # pooled output at the first EOS of each (first) chunk, projected (Kohya's pool_workaround)
        eos_pos = (flat == eos_token_id).int().argmax(dim=-1)
        last = out.last_hidden_state[torch.arange(flat.shape[0], device=device), eos_pos]
        pooled = encoder.text_projection(last)[::n_chunks]
    hidden = hidden.reshape(batch, -1, hidden.shape[-1])
    if n_chunks > 1:
        size = input_ids.shape[-1]
        parts = [hidden[:, :1]] + [hidden[:, k * size + 1:(k + 1) * size - 1] for k in range(n_chunks)] + [hidden[:, -1:]]
        hidden = torch.cat(parts, dim=1)
    return hidden, pooled


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int],
                  *, batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """SDXL size conditioning ``(b, 6)``: original (h, w), crop (top, left), target (h, w)."""
    ids = torch.tensor([[*original_size, *crop_top_left, *target_size]], dtype=dtype, device=device)
    return ids.repeat(batch, 1)
