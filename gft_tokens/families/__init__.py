"""The model families, registered once: the only way the CLIs, the training loop, the sweep and the benchmarks
reach a family.

Each family is a sub-package (``llamagen``, ``var``, ``masked``, ``mar``, ``t2i``) holding its network (``model.py``), its
sampler (``sampler.py``), its training adapter (``adapter.py``), its official-checkpoint importer where it has one
(``importer.py``), and a :class:`~gft_tokens.families.base.Family` record ``FAMILY`` naming them. Adding a family:
write the sub-package and add its ``FAMILY`` to :data:`FAMILIES` below (README, "Adding a family").

``build_model(family, preset, **overrides)`` builds a fresh model; ``load_model(path)`` loads a saved one, its family
chosen by ``config.json``'s ``model_type``; ``sample_images(model, tokenizer, labels, beta=… | cfg_scale=…)`` samples
any family and decodes.
"""

from __future__ import annotations

import torch

from ..errors import GFTError
from ..fs import read_config_dict
from . import llamagen, mar, masked, t2i, var
from .base import Adapter, Family, LossInputs, SamplerOption
from .llamagen import LlamaGen, LlamaGenConfig, llamagen_config
from .var import VAR, VARConfig, var_config

FAMILIES: dict[str, Family] = {f.name: f for f in (llamagen.FAMILY, var.FAMILY, masked.FAMILY, mar.FAMILY,
                                                      t2i.FAMILY)}


def get_family(name: str) -> Family:
    """The family registered as ``name`` (a clear error naming the known ones otherwise)."""
    if name not in FAMILIES:
        raise GFTError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(model_or_type) -> Family:
    """The family of a model (or of a ``model_type`` string from a config)."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    for fam in FAMILIES.values():
        if fam.model_type == model_type:
            return fam
    raise GFTError(f"no model family has model_type {model_type!r}; known: "
                   f"{', '.join(f.model_type for f in FAMILIES.values())}")


def build_config(family: str, preset: str, **overrides):
    return get_family(family).build_config(preset, **overrides)


def build_model(family: str, preset: str, **overrides):
    fam = get_family(family)
    return fam.model_class(fam.build_config(preset, **overrides))


def load_model(path, map_location="cpu"):
    """Load any saved token model (family from config.json's ``model_type``)."""
    model_type = read_config_dict(path).get("model_type")
    try:
        fam = family_of(str(model_type))
    except GFTError:
        raise GFTError(f"{path} does not hold a token model (model_type {model_type!r})") from None
    return fam.model_class.from_pretrained(path, map_location=map_location)


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
    """The family's sampler on ``model``: codes (or continuous tokens) for ``labels``."""
    return family_of(model).sample(model, labels, **kwargs)


@torch.no_grad()
def sample_images(model, tokenizer, labels, **kwargs) -> torch.Tensor:
    """Sample codes for ``labels`` and decode them: images (B, 3, H, W) in [-1, 1].

    ``kwargs`` go to the family's sampler: ``beta`` (GFT) or ``cfg_scale`` (CFG, LlamaGen's convention),
    ``cfg_schedule``, ``temperature``/``top_k``/``top_p``, ``generator``, ``stats`` and the family's own options.
    """
    check_tokenizer_matches(model, tokenizer)
    fam = family_of(model)
    codes = fam.sample(model, labels, **kwargs)
    return tokenizer.decode(fam.to_tokenizer_input(model, codes))


__all__ = ["FAMILIES", "Adapter", "Family", "LlamaGen", "LlamaGenConfig", "LossInputs", "SamplerOption", "VAR",
           "VARConfig", "build_config", "build_model", "check_tokenizer_matches", "family_of", "get_family",
           "llamagen_config", "load_model", "sample_codes", "sample_images", "var_config"]
