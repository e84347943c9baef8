"""MAR's continuous variant: the masked transformer over KL latents with a per-token diffusion head."""

import torch

from ...paths import shipped
from ...tokenizers import random_tokenizer
from ..base import BenchSpec, CurveSize, Family, SamplerOption
from ..masked import STEPS
from .adapter import MARAdapter
from .model import PRESETS, MARModel, mar_config, tokens_to_grid
from .sampler import CFG_SCHEDULES, sample


def _latents_for_tokenizer(model, tokens):
    return tokens_to_grid(tokens, model.config.grid_size)


def _bench_model(preset, vocab, grid):
    """16-channel latents on a grid × grid token grid; the head's zero-initialised output layers made random."""
    torch.manual_seed(0)
    model = MARModel(mar_config(preset, token_dim=16, grid_size=grid, num_classes=1000)).eval()
    for name, param in model.diffloss.named_parameters():
        if param.ndim == 2 and not param.any():
            torch.nn.init.normal_(param, std=0.02)
    return model


def _bench_tokenizer(vocab, grid, model):
    """The shipped KL tokenizer's architecture with the model's latent width at this grid, random weights."""
    return random_tokenizer(shipped("tokenizers/shapes-kl"), latent_channels=model.config.token_dim,
                            image_size=4 * grid)


FAMILY = Family(
    name="mar", model_class=MARModel, config_fn=mar_config, presets=PRESETS, adapter=MARAdapter(), sample=sample,
    to_tokenizer_input=_latents_for_tokenizer, cfg_schedules=CFG_SCHEDULES, importers=("mar",),
    sampler_options=(
        STEPS,
        SamplerOption("clip_x0", float, "clamp the diffusion head's x0 estimates to ±this (normalised latents; "
                                        "default: no clipping, as MAR)", gt=0),
    ),
    description="MAR: continuous tokens, diffusion head, one transformer pass per decoding step",
    bench=BenchSpec(_bench_model, preset="MAR-tiny", batch=16, vocabs=(None,), cache=False, options={"steps": 16},
                    tokenizer=_bench_tokenizer,
                    # the diffusion head (every token, every denoising step) makes MAR the slowest family on a CPU
                    curve=(CurveSize("MAR-nano"), CurveSize("MAR-tiny", batches=(1, 8, 32)),
                           CurveSize("MAR-small", batches=(1, 8)))),
)

__all__ = ["FAMILY", "MARModel", "mar_config"]
