"""Samplers, one per model family; each takes ``beta`` (GFT, one pass) or its CFG argument (two passes):
``cfg_scale`` w for LlamaGen (``u + w·(c − u)``), ``cfg`` t for VAR (``(1 + t)·c − t·u``, ramped over scales).

:func:`sample_images` dispatches on the model's family and decodes the codes with the tokenizer.
"""

from __future__ import annotations

import torch

from ..errors import GFTError
from ..models import family_of

SAMPLERS: dict = {}


def register_sampler(family: str, sample_fn, codes_to_tokenizer_input) -> None:
    """``codes_to_tokenizer_input(model, tokenizer, codes)`` turns sampler output into what ``decode`` takes."""
    SAMPLERS[family] = (sample_fn, codes_to_tokenizer_input)


def check_tokenizer_matches(model, tokenizer) -> None:
    """Refuse a tokenizer whose codebook or grid differs from the one the model was trained with."""
    record = getattr(model.config, "tokenizer", None) or {}
    mine = tokenizer.describe()
    for key in ("type", "codebook_size", "grid_size", "scales", "latent_channels"):
        if key in record and key in mine and record[key] != mine[key]:
            raise GFTError(f"tokenizer mismatch: the model was trained with {key} {record[key]}, "
                           f"the tokenizer has {mine[key]}")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and vocab != tokenizer.codebook_size:
        raise GFTError(f"tokenizer mismatch: model vocabulary {vocab} vs tokenizer codebook {tokenizer.codebook_size}")


def sample_codes(model, labels, **kwargs):
    family = family_of(model.config.model_type)
    if family not in SAMPLERS:
        raise GFTError(f"no sampler registered for model family {family!r}")
    return SAMPLERS[family][0](model, labels, **kwargs)


@torch.no_grad()
def sample_images(model, tokenizer, labels, **kwargs) -> torch.Tensor:
    """Sample codes for ``labels`` and decode them: images (B, 3, H, W) in [-1, 1]."""
    check_tokenizer_matches(model, tokenizer)
    family = family_of(model.config.model_type)
    codes = sample_codes(model, labels, **kwargs)
    return tokenizer.decode(SAMPLERS[family][1](model, tokenizer, codes))


def _llamagen_codes(model, tokenizer, codes):
    g = model.config.grid_size
    return codes.view(codes.shape[0], g, g)


def _var_codes(model, tokenizer, codes):
    from ..tokenizers.multiscale import split_scales

    return split_scales(codes, model.scales)


def _mar_latents(model, tokenizer, tokens):
    from ..models.mar_continuous import tokens_to_grid

    return tokens_to_grid(tokens, model.config.grid_size)


def _register_builtin() -> None:
    from .autoregressive import sample as ar_sample
    from .mar import sample as mar_sample
    from .masked import sample as masked_sample
    from .next_scale import sample as next_scale_sample

    register_sampler("llamagen", ar_sample, _llamagen_codes)
    register_sampler("masked", masked_sample, _llamagen_codes)  # same (B, N) raster codes on a square grid
    register_sampler("var", next_scale_sample, _var_codes)
    register_sampler("mar", mar_sample, _mar_latents)  # continuous tokens (B, N, C) → latent grid (B, C, h, w)


_register_builtin()
