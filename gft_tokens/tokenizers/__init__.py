"""Image tokenizers: images in [-1, 1] ↔ integer code grids.

>>> from gft_tokens.tokenizers import load_tokenizer
>>> tok = load_tokenizer("tokenizers/shapes-vq")   # config.json + model.safetensors
>>> codes = tok.encode(images)                     # (B, h, w) int64
>>> recon = tok.decode(codes)                      # (B, 3, H, W) in [-1, 1]

Multi-scale (VAR) tokenizers encode to a list of per-scale maps and decode from it:

>>> tok = load_tokenizer("tokenizers/shapes-msvq")
>>> codes = tok.encode(images)                     # [(B, 1, 1), (B, 2, 2), ..., (B, 8, 8)]
"""

from __future__ import annotations

from ..errors import GFTError
from ..fs import read_config_dict
from .kl import KLConfig, KLTokenizer
from .ldm import LDMKLConfig, LDMKLTokenizer, VARVQVAE, VARVQVAEConfig
from .llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from .multiscale import MultiScaleVQConfig, MultiScaleVQTokenizer
from .vq import VQConfig, VQTokenizer

TOKENIZER_CLASSES = {VQConfig.model_type: VQTokenizer, LlamaGenVQConfig.model_type: LlamaGenVQ}


def register_tokenizer(cls) -> None:
    """Make ``load_tokenizer`` recognise checkpoints of ``cls`` (keyed by its config's ``model_type``)."""
    TOKENIZER_CLASSES[cls.config_class.model_type] = cls


def load_tokenizer(path, map_location="cpu"):
    """Load a tokenizer saved with ``save_pretrained``; its class is read from ``config.json``'s ``model_type``."""
    model_type = read_config_dict(path).get("model_type")
    if model_type not in TOKENIZER_CLASSES:
        raise GFTError(
            f"{path} is not a tokenizer checkpoint (model_type {model_type!r}; known: {sorted(TOKENIZER_CLASSES)})"
        )
    return TOKENIZER_CLASSES[model_type].from_pretrained(path, map_location=map_location)


def random_tokenizer(path, **overrides):
    """A tokenizer of the architecture saved at ``path`` (its ``config.json`` only: the weights are not read), with
    config ``overrides`` (``codebook_size``, ``image_size``, ``scales`` …) and fresh random weights, in eval mode —
    what the sampling benchmark decodes with, at any grid and vocabulary, without downloading anything."""
    config = read_config_dict(path)
    model_type = config.get("model_type")
    if model_type not in TOKENIZER_CLASSES:
        raise GFTError(f"{path} is not a tokenizer checkpoint (model_type {model_type!r})")
    cls = TOKENIZER_CLASSES[model_type]
    for key in ("architectures", "transformers_version", "model_type"):
        config.pop(key, None)
    if "kmeans_init" in config:
        overrides.setdefault("kmeans_init", False)  # a random codebook, not an all-zero one waiting for data
    return cls(cls.config_class(**{**config, **overrides})).eval()


register_tokenizer(MultiScaleVQTokenizer)
register_tokenizer(KLTokenizer)
register_tokenizer(VARVQVAE)
register_tokenizer(LDMKLTokenizer)


__all__ = ["KLConfig", "KLTokenizer", "LDMKLConfig", "LDMKLTokenizer", "VARVQVAE", "VARVQVAEConfig", "LlamaGenVQ", "LlamaGenVQConfig", "MultiScaleVQConfig", "MultiScaleVQTokenizer", "VQConfig",
           "VQTokenizer", "load_tokenizer", "random_tokenizer", "register_tokenizer"]
