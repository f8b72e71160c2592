"""Textual Inversion (sd-scripts train_textual_inversion.py, §5.1): learn only new token embeddings.

``token_string`` with ``num_vectors_per_token`` = n adds the tokens ``tok, tok1, ... tok{n-1}`` to
every tokenizer (both for SDXL), grows the text encoders' token-embedding matrices and starts the new
rows from ``init_word`` (its token vectors repeated or truncated to n). Only those rows train: a
gradient hook zeroes every other row's gradient, and after each optimizer step the other rows are
copied back from a saved copy, because decoupled weight decay (AdamW) moves parameters whose
gradient is zero. Captions get ``tok`` expanded to ``tok tok1 ...``; with an object/style template
the caption is a random template sentence instead.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from trainer.output_names import model_ext

from .base import KindError, TrainingKind, cast_module, save_dtype
from .embedding_files import Embedding, read_embedding, write_embedding
from .templates import template_caption, template_list


class TextualInversionKind(TrainingKind):
    name = "textual_inversion"
    trains_unet = False

    def __init__(self, config):
        super().__init__(config)
        self.token_string = str(config.token_string).strip()
        if not self.token_string:
            raise KindError("token_string is empty: set the new word to learn, e.g. mychar")
        if re.search(r"[\s,]", self.token_string):
            suggestion = re.sub(r"[\s,]+", "_", self.token_string)
            raise KindError(f"token_string {self.token_string!r} contains a space or comma; use one word such as "
                            f"{suggestion}")
        self.num_vectors = int(config.num_vectors_per_token)
        self.init_word = str(config.init_word)
        self.template = config.template
        if self.template != "caption":
            template_list(self.template)  # validates the name
        self.embedding_format = config.embedding_format
        self.token_strings = [self.token_string] + [f"{self.token_string}{i}" for i in range(1, self.num_vectors)]
        self.words = " ".join(self.token_strings)
        self._token_re = re.compile(r"(?<![\w])" + re.escape(self.token_string) + r"(?![\w])",
                                    re.IGNORECASE)  # CLIP tokenizers lower-case the prompt
        self.token_ids: list[list[int]] = []
        self._originals: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._hooks = []
        self._checkpoint_hash: str | None = None
        self.param_groups: list[dict] = []
        want = str(config.save_model_as)
        if self.embedding_format == "a1111" and want == "safetensors" and not config.sdxl:
            self._warn("embedding_format a1111 is a torch pickle layout (string_to_param, name, step); the embedding "
                       "is saved as .pt. Choose embedding_format kohya for a .safetensors embedding.")
        if self.embedding_format not in ("kohya", "a1111"):
            raise KindError(f"embedding_format must be kohya or a1111, got {self.embedding_format!r}")

    # ---- set-up ---------------------------------------------------------------------------------
    def prepare(self, base, train_dtype: torch.dtype = torch.float32) -> list[dict]:
        if self.config.cache_text_encoder_outputs:
            raise KindError("cache_text_encoder_outputs cannot be used for Textual Inversion: the text encoder "
                            "output changes as the embedding trains. Turn it off.")
        self.base = base
        if base.family == "sdxl" and self.embedding_format == "a1111":
            self.warnings = [w for w in self.warnings if "a1111" not in w]
            self._warn("SDXL embeddings have a single layout (clip_l + clip_g), which A1111, ComfyUI and diffusers "
                       "read; embedding_format a1111 changes nothing for SDXL")
        base.unet.requires_grad_(False)
        for tokenizer, encoder in zip(base.tokenizers, base.text_encoders):
            encoder.requires_grad_(False)
            cast_module(encoder, train_dtype)
            self.token_ids.append(self._add_tokens(tokenizer, encoder))
        self._initialise(base)
        lr = float(self.config.learning_rate)
        self.param_groups = []
        for index, (encoder, ids) in enumerate(zip(base.text_encoders, self.token_ids)):
            weight = encoder.get_input_embeddings().weight
            weight.requires_grad_(True)
            mask = torch.zeros(weight.shape[0], 1, dtype=torch.bool, device=weight.device)
            mask[ids] = True
            self._masks.append(mask)
            self._originals.append(weight.detach().clone())
            # Other rows never receive a gradient, so clipping and Adam's moments only see the new rows.
            self._hooks.append(weight.register_hook(lambda grad, m=mask: grad * m.to(grad.dtype)))
            self.param_groups.append({"params": [weight], "lr": lr, "name": f"embedding_te{index + 1}"})
        return self.param_groups

    def _add_tokens(self, tokenizer, encoder) -> list[int]:
        vocab = tokenizer.get_vocab()
        taken = [t for t in self.token_strings if t in vocab or t.lower() in vocab
                 or len(tokenizer(t, add_special_tokens=False).input_ids) == 1]  # a word CLIP already knows
        if taken:
            raise KindError(f"token_string {self.token_string!r}: {taken[0]!r} is already in the tokenizer's "
                            "vocabulary; choose a new word (e.g. add a rare suffix such as "
                            f"{self.token_string}_ti)")
        added = tokenizer.add_tokens(self.token_strings)
        if added != self.num_vectors:
            raise KindError(f"token_string {self.token_string!r}: only {added} of {self.num_vectors} tokens "
                            "could be added to the tokenizer; choose another word")
        ids = tokenizer.convert_tokens_to_ids(self.token_strings)
        needed = max(max(ids) + 1, encoder.get_input_embeddings().weight.shape[0])
        encoder.resize_token_embeddings(needed, mean_resizing=False)
        for text in (self.token_string, self.words):  # the tokenizer must keep the new words whole
            got = tokenizer(text, add_special_tokens=False).input_ids
            if got != ids[:len(got)] or not got:
                raise KindError(f"token_string {self.token_string!r} is not kept as one token by the tokenizer "
                                f"(it encodes as {got}); use lower-case letters, digits and _ only")
        return ids

    def _initialise(self, base) -> None:
        weights = str(self.config.weights)
        if weights:
            emb = read_embedding(Path(weights), num_text_encoders=len(base.text_encoders))
            if emb.num_vectors != self.num_vectors:
                raise KindError(f"weights {weights} has {emb.num_vectors} vectors but num_vectors_per_token is "
                                f"{self.num_vectors}; set num_vectors_per_token to {emb.num_vectors}")
            self._set_rows(emb.vectors, source=weights)
            return
        if not self.init_word:
            self._warn("init_word is empty: the new token starts from random vectors")
            return
        vectors = []
        for tokenizer, encoder in zip(base.tokenizers, base.text_encoders):
            init_ids = tokenizer(self.init_word, add_special_tokens=False).input_ids
            if not init_ids:
                raise KindError(f"init_word {self.init_word!r} encodes to no tokens; choose a real word")
            if len(init_ids) > self.num_vectors and not any("init_word" in w for w in self.warnings):
                self._warn(f"init_word {self.init_word!r} is {len(init_ids)} tokens but num_vectors_per_token is "
                           f"{self.num_vectors}: only its first {self.num_vectors} token(s) are used")
            table = encoder.get_input_embeddings().weight.detach()
            vectors.append(torch.stack([table[init_ids[i % len(init_ids)]] for i in range(self.num_vectors)]))
        self._set_rows(vectors, source="init_word")

    def _set_rows(self, vectors: list[torch.Tensor], source: str) -> None:
        for encoder, ids, vec in zip(self.base.text_encoders, self.token_ids, vectors):
            weight = encoder.get_input_embeddings().weight
            if vec.shape[-1] != weight.shape[1]:
                raise KindError(f"{source}: embedding width {vec.shape[-1]} does not fit this model's text encoder "
                                f"({weight.shape[1]}); it was trained for another model family")
            with torch.no_grad():
                weight[ids] = vec.to(weight.device, weight.dtype)

    def trained_modules(self) -> list[torch.nn.Module]:
        return list(self.base.text_encoders) if self.base is not None else []

    # ---- per step -------------------------------------------------------------------------------
    def prepare_captions(self, captions: list[str]) -> list[str]:
        if self.template != "caption":
            return [template_caption(self.template, self.words, self.rng) for _ in captions]
        return [self.expand_prompt(c) if self._token_re.search(c) else (f"{self.words}, {c}" if c else self.words)
                for c in captions]

    def expand_prompt(self, prompt: str) -> str:
        """``tok`` -> ``tok tok1 tok2``: the prompt uses every learned vector."""
        if self.num_vectors == 1:
            return prompt
        return self._token_re.sub(self.words, prompt)

    def text_encoder_grad(self) -> bool:
        return True

    @property
    def text_encoder_trains(self) -> bool:
        return True

    def after_optimizer_step(self, global_step: int) -> None:
        """Put every row except the new tokens' back, bit for bit."""
        with torch.no_grad():
            for encoder, original, mask in zip(self.base.text_encoders, self._originals, self._masks):
                weight = encoder.get_input_embeddings().weight
                weight.copy_(torch.where(mask, weight, original))

    # ---- output ---------------------------------------------------------------------------------
    @property
    def output_ext(self) -> str:
        """Read it after prepare(): an SDXL embedding is never an A1111 pickle, so it keeps .safetensors."""
        family = getattr(self.base, "family", None)  # None before prepare(): the config's sdxl flag decides
        return model_ext(self.config, sdxl=None if family is None else family == "sdxl" or bool(self.config.sdxl))

    def embedding(self, step: int | None = None) -> Embedding:
        vectors = [enc.get_input_embeddings().weight.detach()[ids].float().cpu().clone()
                   for enc, ids in zip(self.base.text_encoders, self.token_ids)]
        return Embedding(vectors, self.token_string, step)

    def save(self, path: Path, *, step: int = 0, epoch: int = 0, metadata: dict | None = None) -> Path:
        family = getattr(self.base, "family", "sd1")
        sd_checkpoint = name = None
        if self.embedding_format == "a1111" and family != "sdxl":
            sd_checkpoint, name = self._checkpoint_identity()
        return write_embedding(Path(path), self.embedding(step), family=family, fmt=self.embedding_format,
                               dtype=save_dtype(self.config.save_precision),
                               sd_checkpoint=sd_checkpoint, sd_checkpoint_name=name, metadata=metadata,
                               v_prediction=bool(getattr(self.base, "v_prediction", False)))

    def _checkpoint_identity(self) -> tuple[str | None, str | None]:
        """A1111's sd_checkpoint (first 10 hex of the file's sha256) and sd_checkpoint_name."""
        source = Path(str(self.config.pretrained_model_name_or_path))
        if not source.is_file():
            return None, source.name or None
        if self._checkpoint_hash is None:
            digest = hashlib.sha256()
            with open(source, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            self._checkpoint_hash = digest.hexdigest()[:10]
        return self._checkpoint_hash, source.stem

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"te{i}": v for i, v in enumerate(self.embedding().vectors)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._set_rows([state[f"te{i}"] for i in range(len(self.token_ids))], source="resume state")
