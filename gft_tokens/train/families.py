"""What the shared training loop needs to know about each model family.

A :class:`Family` builds the model config from a preset, the tokenizer and the data, and turns a batch of codes
into what the objective consumes: ``logits_fn(cond, beta)``, the targets and an optional loss mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..data.codes import check_codes_match
from ..errors import GFTError
from ..models import FAMILIES
from ..models.masked import draw_training_mask
from ..objectives import OBJECTIVES


@dataclass
class LossInputs:
    logits_fn: Callable
    targets: torch.Tensor
    loss_mask: torch.Tensor | None = None


class Family:
    name: str = ""
    # what the model trains on: "codes" (integer ids of a VQ tokenizer) or "latents" (a continuous tokenizer's)
    inputs: str = "codes"
    # config fields the loop sets from the tokenizer and the data (not settable through model overrides)
    derived_keys: tuple[str, ...] = ("vocab_size", "grid_size", "num_classes", "tokenizer")

    @property
    def model_class(self):
        return FAMILIES[self.name]["model"]

    def check_options(self, preset: str | None, overrides: dict) -> None:
        """Refuse an unknown preset or model-override key up front, before any data is read or written."""
        import difflib
        import inspect

        def hint(word, known):
            close = difflib.get_close_matches(word, sorted(known), n=1)
            return f" (did you mean {close[0]!r}?)" if close else ""

        presets = FAMILIES[self.name]["presets"]
        if preset is not None and preset not in presets:
            raise GFTError(f"unknown {self.name} preset {preset!r}{hint(preset, presets)}; known: {', '.join(presets)}")
        config_class = self.model_class.config_class
        known = {p for p in inspect.signature(config_class.__init__).parameters if p not in ("self", "kwargs")}
        for key in overrides:
            if key in self.derived_keys:
                raise GFTError(f"model option {key!r} is set from the tokenizer and the data; remove it from `model:`")
            if key not in known:
                raise GFTError(f"unknown model option {key!r} in `model:`{hint(str(key), known)}")

    def config(self, preset: str, tokenizer, num_classes: int, overrides: dict):
        raise NotImplementedError

    def token_shape(self, config) -> tuple[int, ...]:
        """Shape of one sample's codes as stored in the code dataset (after the views axis)."""
        raise NotImplementedError

    def loss_inputs(self, model, codes: torch.Tensor, generator: torch.Generator) -> LossInputs:
        raise NotImplementedError

    def prepare_model(self, model, tokenizer) -> None:
        """Give a freshly built (or initialised) model what it needs from the tokenizer; nothing by default."""

    def objective(self, name: str):
        """The training objective ``name`` ("gft" or "cfg") for this family's outputs."""
        return OBJECTIVES[name]

    def check_data(self, data, config) -> None:
        """Refuse extracted training data that does not fit the model."""
        check_codes_match(data, config.vocab_size, self.token_shape(config))


class LlamaGenFamily(Family):
    name = "llamagen"

    def config(self, preset, tokenizer, num_classes, overrides):
        h, w = tokenizer.grid_size
        if h != w:
            raise ValueError("LlamaGen needs a square token grid")
        return FAMILIES[self.name]["config"](
            preset, vocab_size=tokenizer.codebook_size, grid_size=h, num_classes=num_classes,
            tokenizer=tokenizer.describe(), **overrides,
        )

    def token_shape(self, config):
        return (config.grid_size, config.grid_size)

    def loss_inputs(self, model, codes, generator):
        flat = codes.flatten(1)
        return LossInputs(lambda cond, beta: model.head_inputs(flat, cond, beta), flat)


class MaskedFamily(Family):
    """MAR/MaskGIT-style masked model: codes as a square grid, a fresh random mask per batch."""

    name = "masked"

    def config(self, preset, tokenizer, num_classes, overrides):
        h, w = tokenizer.grid_size
        if h != w:
            raise GFTError(f"the masked model needs a square token grid, the tokenizer has {h}x{w}")
        return FAMILIES[self.name]["config"](
            preset, vocab_size=tokenizer.codebook_size, grid_size=h, num_classes=num_classes,
            tokenizer=tokenizer.describe(), **overrides,
        )

    def token_shape(self, config):
        return (config.grid_size, config.grid_size)

    def loss_inputs(self, model, codes, generator):
        flat = codes.flatten(1)
        c = model.config
        # drawn once per batch and shared by the objective's conditional and unconditional passes
        mask = draw_training_mask(flat.shape[0], flat.shape[1], generator, c.mask_ratio_min,
                                  c.mask_ratio_std).to(flat.device)
        return LossInputs(lambda cond, beta: model.head_inputs(flat, cond, beta, mask=mask), flat, mask)


class VARFamily(Family):
    """Next-scale prediction: codes are the scales concatenated, (L,) = Σ s² per image; the model reads its
    inputs through a frozen copy of the tokenizer's quantizer (codebook + φ convs), loaded in ``prepare_model``."""

    name = "var"
    derived_keys = (*Family.derived_keys, "scales", "cvae", "quant_resi", "share_quant_resi")

    def config(self, preset, tokenizer, num_classes, overrides):
        scales = getattr(tokenizer, "scales", None)
        if scales is None or not hasattr(tokenizer, "quantizer_state"):
            raise GFTError(f"VAR needs a multi-scale tokenizer (e.g. tokenizers/shapes-msvq); this one "
                           f"({tokenizer.describe()['type']}) has a single scale")
        t = tokenizer.config
        return FAMILIES[self.name]["config"](
            preset, vocab_size=tokenizer.codebook_size, scales=list(scales), cvae=t.codebook_dim,
            quant_resi=t.quant_resi, share_quant_resi=t.share_quant_resi, num_classes=num_classes,
            tokenizer=tokenizer.describe(), **overrides,
        )

    def token_shape(self, config):
        return (config.num_tokens,)

    def loss_inputs(self, model, codes, generator):
        return LossInputs(lambda cond, beta: model.head_inputs(codes, cond, beta), codes)

    def prepare_model(self, model, tokenizer):
        if not hasattr(tokenizer, "quantizer_state"):
            raise GFTError("VAR needs a multi-scale tokenizer (e.g. tokenizers/shapes-msvq)")
        model.load_quantizer(tokenizer)


class MARFamily(Family):
    """MAR over continuous latents (a KL tokenizer's, (C, h, w) per image) with a diffusion head: a fresh random
    mask per batch as the masked family, and the ε objectives of :mod:`gft_tokens.models.diffloss`."""

    name = "mar"
    inputs = "latents"
    derived_keys = ("token_dim", "grid_size", "num_classes", "tokenizer")

    def config(self, preset, tokenizer, num_classes, overrides):
        channels = getattr(tokenizer, "latent_channels", None)
        if channels is None:
            raise GFTError(f"the mar family needs a continuous tokenizer (e.g. tokenizers/shapes-kl); this one "
                           f"({tokenizer.describe()['type']}) gives integer codes — use the masked family for those")
        h, w = tokenizer.grid_size
        if h != w:
            raise GFTError(f"the mar family needs a square latent grid, the tokenizer has {h}x{w}")
        return FAMILIES[self.name]["config"](preset, token_dim=channels, grid_size=h, num_classes=num_classes,
                                             tokenizer=tokenizer.describe(), **overrides)

    def token_shape(self, config):
        return (config.token_dim, config.grid_size, config.grid_size)

    def check_data(self, data, config) -> None:
        if not data.codes.is_floating_point():
            raise GFTError("the mar family trains on continuous latents, the data holds integer codes")
        if tuple(data.codes.shape[2:]) != self.token_shape(config):
            raise GFTError(f"latents have shape {tuple(data.codes.shape[2:])} per image, the model expects "
                           f"{self.token_shape(config)} (channels, grid, grid)")

    def objective(self, name):
        from ..models.diffloss import DIFFUSION_OBJECTIVES

        return DIFFUSION_OBJECTIVES[name]

    def loss_inputs(self, model, latents, generator):
        from ..models.mar_continuous import grid_to_tokens

        tokens = grid_to_tokens(latents)
        c = model.config
        # drawn once per batch and shared by the objective's conditional and unconditional passes
        mask = draw_training_mask(tokens.shape[0], tokens.shape[1], generator, c.mask_ratio_min,
                                  c.mask_ratio_std).to(tokens.device)
        return LossInputs(lambda cond, beta: model.diffusion_inputs(tokens, cond, beta, mask=mask), tokens, mask)


FAMILY_ADAPTERS: dict[str, Family] = {"llamagen": LlamaGenFamily(), "masked": MaskedFamily(), "var": VARFamily(),
                                      "mar": MARFamily()}
