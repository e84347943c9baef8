"""Model families and their presets.

``build_model(family, preset, **overrides)`` builds a fresh model; ``load_model(path)`` loads a saved one, its class
chosen by ``config.json``'s ``model_type``.
"""

from __future__ import annotations

from ..errors import GFTError
from ..io import read_config_dict
from .llamagen import PRESETS as LLAMAGEN_PRESETS
from .llamagen import LlamaGen, LlamaGenConfig, llamagen_config
from .mar_continuous import PRESETS as MAR_PRESETS
from .mar_continuous import MARModel, mar_config
from .masked import PRESETS as MASKED_PRESETS
from .masked import MaskedTokenModel, masked_config
from .var import PRESETS as VAR_PRESETS
from .var import VAR, VARConfig, var_config

FAMILIES: dict[str, dict] = {
    "llamagen": {"model": LlamaGen, "config": llamagen_config, "presets": LLAMAGEN_PRESETS},
    "masked": {"model": MaskedTokenModel, "config": masked_config, "presets": MASKED_PRESETS},
    "var": {"model": VAR, "config": var_config, "presets": VAR_PRESETS},
    "mar": {"model": MARModel, "config": mar_config, "presets": MAR_PRESETS},  # continuous tokens, diffusion head
}


def register_family(name: str, model_cls, config_fn, presets: dict) -> None:
    FAMILIES[name] = {"model": model_cls, "config": config_fn, "presets": presets}


def family_of(model_type: str) -> str | None:
    for name, fam in FAMILIES.items():
        if fam["model"].config_class.model_type == model_type:
            return name
    return None


def build_config(family: str, preset: str, **overrides):
    if family not in FAMILIES:
        raise GFTError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family]["config"](preset, **overrides)


def build_model(family: str, preset: str, **overrides):
    return FAMILIES[family]["model"](build_config(family, preset, **overrides))


def load_model(path, map_location="cpu"):
    """Load any saved token model (family from config.json's ``model_type``)."""
    model_type = read_config_dict(path).get("model_type")
    family = family_of(model_type)
    if family is None:
        raise GFTError(f"{path} does not hold a token model (model_type {model_type!r})")
    return FAMILIES[family]["model"].from_pretrained(path, map_location=map_location)


__all__ = ["FAMILIES", "LlamaGen", "LlamaGenConfig", "VAR", "VARConfig", "build_config", "build_model", "load_model",
           "llamagen_config", "var_config"]
