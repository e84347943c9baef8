"""MAR/MaskGIT-style masked model over VQ codes: bidirectional encoder/decoder, parallel decoding."""

import torch

from ...paths import shipped
from ...tokenizers import random_tokenizer
from ..base import BenchSpec, CurveSize, Family, SamplerOption
from .adapter import MaskedAdapter
from .model import PRESETS, MaskedTokenModel, masked_config
from .sampler import CFG_SCHEDULES, ORDERS, sample


def _codes_for_tokenizer(model, codes):
    g = model.config.grid_size
    return codes.view(codes.shape[0], g, g)


STEPS = SamplerOption("steps", int, "parallel decoding steps, 1 .. number of tokens (default: 16)", min=1)


def _bench_model(preset, vocab, grid):
    torch.manual_seed(0)
    model = MaskedTokenModel(masked_config(preset, vocab_size=vocab, grid_size=grid, num_classes=1000)).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-looking head (the fresh one is all zeros)
    return model


def _bench_tokenizer(vocab, grid, model):
    """The shipped VQ tokenizer's architecture (4x downsampling) at this grid and codebook, random weights."""
    return random_tokenizer(shipped("tokenizers/shapes-vq"), codebook_size=vocab, image_size=4 * grid)


FAMILY = Family(
    name="masked", model_class=MaskedTokenModel, config_fn=masked_config, presets=PRESETS, adapter=MaskedAdapter(),
    sample=sample, to_tokenizer_input=_codes_for_tokenizer, cfg_schedules=CFG_SCHEDULES,
    sampler_options=(
        STEPS,
        SamplerOption("order", str, "which masked tokens to fix each step: MAR's random order or MaskGIT's "
                                    "confidence (default: random)", choices=ORDERS),
        SamplerOption("choice_temperature", float, "Gumbel noise on the confidence order, annealed to 0 "
                                                   "(default: 4.5)", min=0),
    ),
    description="masked tokens (MAR/MaskGIT): one pass per decoding step",
    bench=BenchSpec(_bench_model, preset="MAR-tiny", batch=32, repeats=3, cache=False, options={"steps": 16},
                    variants={"": {"order": "random"}, "_confidence": {"order": "confidence"}},
                    tokenizer=_bench_tokenizer,
                    curve=(CurveSize("MAR-nano", repeats=3), CurveSize("MAR-tiny", repeats=3), CurveSize("MAR-small"))),
)

__all__ = ["FAMILY", "MaskedTokenModel", "masked_config"]
