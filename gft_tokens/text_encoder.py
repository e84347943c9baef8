"""Frozen text encoders for caption conditioning, through transformers, from a local directory only.

:class:`TextEncoder` loads any local T5 encoder (``T5EncoderModel``: LlamaGen's FLAN-T5 layout; a full T5
checkpoint's encoder is read from it) or CLIP text model (``CLIPTextModel``) directory with its tokenizer, frozen
and in eval mode, and turns prompts into ``features (B, L, D)`` + ``mask (B, L)`` (True at real tokens). Prompts
are *left*-padded to ``L`` positions, as LlamaGen's T5 feature files: the last position is always a real token,
so the position that predicts the first image token never sits on padding. Padded rows of ``features`` are zero.

:meth:`TextEncoder.describe` (what models, code shards and checkpoints record) carries a ``fingerprint``: the
sha256 of the weight and tokenizer-vocabulary files (:func:`text_encoder_fingerprint`), so that two encoders of the
same type and width but different weights or vocabularies are told apart (:func:`text_encoder_differences`); the
path is recorded too, but not compared, since the same files may be moved.

A prompt longer than ``L`` tokens is refused (a GFTError naming it and its length), not truncated: a cut caption
silently loses the attributes at its end.

:func:`build_shapes_t5` writes the embedded default (``tokenizers/shapes-t5-tiny``): a word-level tokenizer made
with HF ``tokenizers`` from the shapes captions' vocabulary and a small ``T5EncoderModel`` built from a
``T5Config`` at a fixed seed. It is NOT a pretrained language model: its weights are random (frozen), so it only
gives each word sequence a distinct, deterministic feature sequence for the generator to learn from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .errors import GFTError

SHAPES_T5_RECIPE = dict(d_model=64, num_layers=2, num_heads=2, d_kv=32, d_ff=128, max_length=16, seed=0)
SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5


def build_shapes_t5(out: str | os.PathLike, **recipe) -> Path:
    """Write the embedded word-level T5 text encoder (random, frozen; see the module doc) to ``out``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from .data.captions import vocabulary

    r = {**SHAPES_T5_RECIPE, **recipe}
    vocab = {w: i for i, w in enumerate([*SPECIAL, *vocabulary()])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=r["max_length"], padding_side="left")
    config = T5Config(vocab_size=len(vocab), d_model=r["d_model"], d_kv=r["d_kv"], d_ff=r["d_ff"],
                      num_layers=r["num_layers"], num_heads=r["num_heads"], pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, dropout_rate=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r["seed"])
        model = T5EncoderModel(config).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    (out / "recipe.json").write_text(json.dumps({**r, "vocabulary": "gft_tokens.data.captions.vocabulary()",
                                                 "built_by": "gft_tokens.text_encoder.build_shapes_t5"}, indent=2))
    return out


MODEL_TYPES = ("t5", "mt5", "umt5", "clip_text_model", "clip")


def _read_config(path: str):
    """The transformers config of the local text encoder at ``path`` (refused unless a T5 or CLIP text model)."""
    from transformers import AutoConfig

    if not Path(path, "config.json").is_file():
        raise GFTError(f"text encoder {path} is not a directory with a config.json (a local T5 or CLIP text "
                       "model; nothing is downloaded)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GFTError(f"text encoder {path}: unreadable config ({exc})") from None
    if config.model_type not in MODEL_TYPES:
        raise GFTError(f"text encoder {path} has model_type {config.model_type!r}; a T5 or CLIP text model is "
                       f"needed ({', '.join(MODEL_TYPES)})")
    return config


# files whose content decides the features: the weights and the tokenizer's vocabulary (not the configs, which a
# re-save by another transformers version rewrites; a changed architecture changes the weights anyway)
FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model")
FINGERPRINT_NAMES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt")
DEFAULT_MAX_LENGTH = 120  # LlamaGen's T5 caption length


def text_encoder_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of a text-encoder directory's weight and tokenizer-vocabulary files, names included."""
    from .fs import sha256_file

    files = sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith(".")
                   and (p.suffix in FINGERPRINT_SUFFIXES or p.name in FINGERPRINT_NAMES))
    if not any(p.suffix in FINGERPRINT_SUFFIXES[:-1] for p in files):
        raise GFTError(f"text encoder {path} has no weights file (model.safetensors or pytorch_model.bin)")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()[:16]


def default_max_length(path: str | os.PathLike) -> int:
    """The caption length of a text encoder: its ``recipe.json``'s ``max_length`` (the embedded ones), else 120."""
    recipe = Path(path, "recipe.json")
    return int(json.loads(recipe.read_text())["max_length"]) if recipe.is_file() else DEFAULT_MAX_LENGTH


def describe_text_encoder(path: str | os.PathLike, max_length: int | None = None, fingerprint: bool = False) -> dict:
    """What :meth:`TextEncoder.describe` records, read from the directory's config.json alone (no weights loaded:
    an importer checks a FLAN-T5-XL's width without reading its gigabytes). ``fingerprint``: also hash the weight
    files (read, not loaded), as :meth:`TextEncoder.describe` does."""
    path = str(path)
    config = _read_config(path)
    if config.model_type == "clip":
        config = config.text_config
    width = int(getattr(config, "d_model", None) or config.hidden_size)
    kind = "clip" if "clip" in config.model_type else "t5"
    length = int(max_length) if max_length is not None else default_max_length(path)
    record = {"path": path, "type": kind, "hidden_size": width, "max_length": length}
    if fingerprint:
        record["fingerprint"] = text_encoder_fingerprint(path)
    return record


IDENTITY_KEYS = ("type", "hidden_size", "max_length", "fingerprint")


def text_encoder_differences(was: dict, mine: dict) -> list[str]:
    """How two text-encoder records differ (``'hidden_size 64 → 32'`` …), the path aside; a key only one records
    (an older record without ``fingerprint``) is not compared."""
    return [f"{k} {was[k]} → {mine[k]}" for k in IDENTITY_KEYS if k in was and k in mine and was[k] != mine[k]]


class TextEncoder:
    """A frozen local T5 encoder or CLIP text model with its tokenizer: ``encode(prompts) -> (features, mask)``."""

    def __init__(self, model, tokenizer, path: str, kind: str, max_length: int):
        self.model, self.tokenizer, self.path, self.kind, self.max_length = model, tokenizer, path, kind, max_length
        self.model.requires_grad_(False).eval()
        self._fingerprint = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_length: int | None = None) -> "TextEncoder":
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        path = str(path)
        config = _read_config(path)
        kinds = {"t5": T5EncoderModel, "mt5": T5EncoderModel, "umt5": T5EncoderModel,
                 "clip_text_model": CLIPTextModel, "clip": CLIPTextModel}
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a few kilobytes; restored below
        try:
            model = kinds[config.model_type].from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except OSError as exc:
            raise GFTError(f"text encoder {path}: {exc}") from None
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        tokenizer.padding_side = "left"
        if max_length is None:
            max_length = default_max_length(path)
        return cls(model, tokenizer, path, "clip" if "clip" in config.model_type else "t5", int(max_length))

    @property
    def hidden_size(self) -> int:
        c = self.model.config
        return int(getattr(c, "d_model", None) or c.hidden_size)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = text_encoder_fingerprint(self.path)
        return self._fingerprint

    def describe(self) -> dict:
        """What a model, code shards' ``dataset.json`` and a checkpoint record: path, type, width, caption length
        and the fingerprint of the weight and vocabulary files."""
        return {"path": self.path, "type": self.kind, "hidden_size": self.hidden_size, "max_length": self.max_length,
                "fingerprint": self.fingerprint}

    def to(self, device) -> "TextEncoder":
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, prompts, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (a list of strings) → features (B, L, D) float32, left-padded, and mask (B, L) bool."""
        length = int(max_length or self.max_length)
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise GFTError("no prompts given")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise GFTError(f"empty prompt {p!r}: every prompt needs at least one word")
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        for p, row in zip(prompts, ids):
            if len(row) > length:
                raise GFTError(f"prompt {p!r} is {len(row)} tokens long, more than the model's caption length "
                               f"{length}; shorten it (prompts are refused, not truncated)")
        batch = self.tokenizer(prompts, padding="max_length", max_length=length, return_tensors="pt")
        mask = batch["attention_mask"].bool()
        device = next(self.model.parameters()).device
        out = self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask.long().to(device))
        feats = out.last_hidden_state.float() * mask[..., None].to(device)
        return feats, mask.to(device)

    def encode_batched(self, prompts, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` of many prompts, ``batch_size`` at a time (a dataset's captions), concatenated."""
        prompts = list(prompts)
        parts = [self.encode(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        return torch.cat([f for f, _ in parts]), torch.cat([m for _, m in parts])
