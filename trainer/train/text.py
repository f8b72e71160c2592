"""Captions → U-Net conditioning for training, the way sd-scripts builds it.

SD1/SD2: the last hidden state, or with clip_skip N the N-th last layer + the final layer norm.
SDXL: both encoders' penultimate layers concatenated, plus text encoder 2's pooled projection.
Long captions (max_token_length 150/225) are encoded as 77-token chunks and joined (BOS, 75 × n, EOS).
The encoding itself is trainer.models.text's; this module adds remembering the outputs.
With weighted captions ("(red hair:1.2)") each caption's tokens carry weights that scale its hidden states
(trainer.models.text.weight_tokens); the weights come from the caption text itself, so a remembered or cached
output is keyed by that text, and on disk by its token ids and weights (see _disk).
With no_token_padding (DreamBooth, SD1/SD2) a batch's ids end at its longest caption, so the U-Net's cross-attention
sees no padding past it (sd-scripts train_db.py); see tokens() and _trimmed().

When the text encoders are frozen their output for a caption never changes, so it is computed once:
* cache_outputs(captions): every caption the dataset can yield is encoded up front, in batches; the
  encoders then leave the trained model and can be offloaded (moved off the GPU) for the whole run.
* otherwise (captions change per step: shuffle/dropout) each caption is encoded alone when first
  seen (so it never depends on the rest of the batch) and remembered on the device.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn

from trainer.data.te_cache import TextCacheFolder, TextEncoderOutputCache, weights_fingerprint
from trainer.models.text import batch_padded_length, encode_prompt, tokenize_long, tokenize_weighted

logger = logging.getLogger(__name__)

MEMO_LIMIT_BYTES = 512 * 2**20
# cached outputs stay on the training device while they take at most this share of the encoders' size
# (no copy per step); beyond it they live in host memory and each batch is copied over
DEVICE_SHARE = 0.25


class TextConditioner(nn.Module):
    def __init__(self, family: str, text_encoders, tokenizers, clip_skip: int = 1, max_token_length: int = 75,
                 memoize: bool = True, tokenize=None, grad_enabled=None, weighted: bool = False,
                 pad_to_batch: bool = False):
        super().__init__()
        if weighted and tokenize is not None:  # a DiT family's own tokenization (T5 ...)
            raise ValueError(f"weighted_captions is not supported for {family}: SD1, SD2 and SDXL only")
        if pad_to_batch and (weighted or tokenize is not None or len(tokenizers) != 1
                             or int(max_token_length or 75) != 75):
            raise ValueError("no_token_padding needs one CLIP text encoder (SD1/SD2), max_token_length 75 and "
                             "unweighted captions")
        self.family = family
        self.weighted = weighted  # captions in A1111 prompt-weight syntax
        self.pad_to_batch = pad_to_batch  # no_token_padding: a batch's ids end at its longest caption
        self.encoders = nn.ModuleList(text_encoders)  # part of the trained model until cache_outputs
        self._encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.clip_skip = max(1, int(clip_skip or 1))
        self.max_token_length = int(max_token_length or 75)
        self.memoize = memoize
        self.grad_enabled = grad_enabled  # callable: does the text-encoder forward need gradients now?
        self._tokenize = tokenize  # optional override: captions → list of id tensors, one per encoder
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._memo_bytes = 0
        self.cache: TextEncoderOutputCache | None = None
        self.device: torch.device | None = None  # where cached conditioning is delivered
        if family == "sdxl" and self.clip_skip > 1:
            logger.warning("clip_skip is ignored for SDXL (it always uses the penultimate layers)")

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        """Token ids per encoder (of the text without the weight syntax, with weighted captions)."""
        return self.tokens(captions)[0]

    def tokens(self, captions: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """What the encoders read for this batch: (ids per encoder, token weights per encoder or None when captions
        are not weighted); with no_token_padding the ids end at the batch's longest caption (sd-scripts'
        `tokenizer(captions, padding=True, truncation=True)`, the same ids as the 77-token ones cut there)."""
        ids, weights = self.full_tokens(captions)
        if self.pad_to_batch:
            ids = [t[:, :batch_padded_length(t, tok.eos_token_id)] for t, tok in zip(ids, self.tokenizers)]
        return ids, weights

    def full_tokens(self, captions: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The ids at the full max_token_length (+ weights): what remembered and cached outputs are made of."""
        if self._tokenize is not None:
            return self._tokenize(captions), None
        if not self.weighted:
            return [tokenize_long(tok, captions, self.max_token_length) for tok in self.tokenizers], None
        pairs = [tokenize_weighted(tok, captions, self.max_token_length) for tok in self.tokenizers]
        return [ids for ids, _ in pairs], [weights for _, weights in pairs]

    @property
    def text_encoders(self) -> list[nn.Module]:  # what encode_prompt reads, as on a BaseModel
        return list(self._encoders)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [B, L, D] and (SDXL) pooled embeddings [B, 1280]."""
        return self.encode_tokens(*self.tokens(captions))

    def encode_tokens(self, ids: list[torch.Tensor], weights: list[torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return encode_prompt(self, ids, self.clip_skip, token_weights=weights)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.memoize:
            grad = self.grad_enabled() if callable(self.grad_enabled) else True
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return self.encode(list(captions))
        return self._trimmed(list(captions), self._remembered(list(captions)))

    def _trimmed(self, captions: list[str], out: tuple[torch.Tensor, torch.Tensor | None]):
        """no_token_padding with frozen encoders: the memo and the cache (memory and disk) keep every caption's
        full 77-token output, so they need no key for it and serve any batch; a batch takes the positions up to its
        longest caption. That is exactly what encoding the batch's shorter ids gives: CLIP's causal attention makes
        position i depend on tokens 0…i only, and those are the same ids."""
        if not self.pad_to_batch:
            return out
        hidden, pooled = out
        return hidden[:, :self.tokens(captions)[0][0].shape[1]], pooled

    def _remembered(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache is not None:
            return self._from_cache(captions)
        for caption in dict.fromkeys(captions):
            if caption not in self._memo:
                if self._memo_bytes > MEMO_LIMIT_BYTES:
                    return self._encode_full(captions)  # too many distinct captions to remember
                with torch.no_grad():
                    hidden, pooled = self._encode_full([caption])
                self._memo[caption] = (hidden[0], None if pooled is None else pooled[0])
                self._memo_bytes += hidden.numel() * hidden.element_size()
        hidden = torch.stack([self._memo[c][0] for c in captions])
        if self._memo[captions[0]][1] is None:  # families without a pooled embedding (SD1/SD2)
            return hidden, None
        return hidden, torch.stack([self._memo[c][1] for c in captions])

    def _encode_full(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode_tokens(*self.full_tokens(captions))

    # ---- the up-front cache -----------------------------------------------------------------------
    def cache_outputs(self, captions: list[str], batch_size: int = 16, on_progress=None,
                      limit_bytes: int | None = None, disk_dir=None) -> bool:
        """Encode every caption now; forward() then only looks them up. Only for frozen encoders.
        With `limit_bytes`, nothing is cached (False) when the outputs would need more memory than that.
        With `disk_dir`, outputs made earlier for the same caption ids and encoders are read from there and
        new ones written there (te_cache.TextCacheFolder)."""
        captions = list(dict.fromkeys(captions))
        if not captions:
            return False
        self.device = next(self._encoders[0].parameters()).device
        if limit_bytes is not None:
            with torch.no_grad():
                hidden, pooled = self._encode_full(captions[:1])
            need = len(captions) * sum(t.numel() * t.element_size() for t in (hidden, pooled) if t is not None)
            if need > limit_bytes:
                logger.info("not caching text-encoder outputs: %d captions need %.1f GiB", len(captions),
                            need / 2**30)
                return False
        cache = TextEncoderOutputCache(self._encode_rows, batch_size, on_progress, disk=self._disk(disk_dir))
        cache.prepare(captions)
        if cache.disk is not None:
            logger.info("text-encoder outputs on disk (%s): %d reused, %d computed", cache.disk.folder,
                        cache.stats["reused"], cache.stats["computed"])
        cache.on_progress = None  # a caption met later is encoded silently (see _from_cache)
        if cache.nbytes <= DEVICE_SHARE * sum(module_bytes(e) for e in self._encoders):
            cache.to(self.device)
        self.cache = cache
        # the encoders leave the module tree: accelerate.prepare must not move them back onto the device
        self.encoders = nn.ModuleList()
        logger.info("cached text-encoder outputs of %d captions (%.1f MiB, kept on %s)", len(captions),
                    cache.nbytes / 2**20, cache.device)
        return True

    def _disk(self, folder) -> TextCacheFolder | None:
        if not folder:
            return None
        dtypes = [str(next(e.parameters()).dtype) for e in self._encoders]
        # weighted: the same words weigh differently, so the file name also hashes the token weights (and the
        # fingerprint says so: plain "(red:1.2)" reads the brackets as text and must never share a file with it)
        settings = (self.family, self.clip_skip, dtypes) + (("weighted_captions",) if self.weighted else ())
        fingerprint = weights_fingerprint(*settings, modules=self._encoders)
        return TextCacheFolder(folder, fingerprint, self._cache_key_tensors)

    def _cache_key_tensors(self, caption: str) -> list[torch.Tensor]:
        ids, weights = self.full_tokens([caption])
        return ids + (weights or [])

    def offload(self, device="cpu") -> None:
        """Move the encoders off the training device (after cache_outputs)."""
        for encoder in self._encoders:
            encoder.to(device)

    def _encode_rows(self, captions: list[str]) -> dict[str, torch.Tensor]:
        hidden, pooled = self._encode_full(captions)
        return {"hidden": hidden} if pooled is None else {"hidden": hidden, "pooled": pooled}

    def _from_cache(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:  # e.g. a training kind rewrote the caption: encode it once, where the encoders ran
            logger.info("encoding %d caption(s) missing from the text-encoder cache", len(missing))
            with modules_on(self.device, *self._encoders):
                self.cache.prepare(missing)
        rows = self.cache.get(captions, self.device)
        return rows["hidden"], rows.get("pooled")


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@contextmanager
def modules_on(device, *modules: nn.Module):
    """Run the body with `modules` on `device`, then put each back where it was (sampling, a missed caption)."""
    homes = [next(m.parameters()).device for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            m.to(home)
