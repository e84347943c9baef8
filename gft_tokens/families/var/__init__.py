"""VAR-style next-scale prediction: block-causal transformer over a pyramid of scales, one pass per scale."""

import torch

from ...errors import GFTError
from ...tokenizers.multiscale import DEFAULT_SCALES, VAR_SCALES_256, split_scales
from ...paths import shipped
from ...tokenizers import random_tokenizer
from ..base import BenchSpec, CurveSize, Family
from .adapter import VARAdapter
from .model import PRESETS, VAR, VARConfig, var_config
from .sampler import CFG_SCHEDULES, sample


def _codes_for_tokenizer(model, codes):
    return split_scales(codes, model.scales)


def _bench_model(preset, vocab, grid):
    """VAR's 1…16 schedule (680 tokens) for grid 16, 1…8 for grid 8; a random quantizer (codebook + φ)."""
    scales = {16: list(VAR_SCALES_256), 8: list(DEFAULT_SCALES)}.get(grid)
    if scales is None:
        raise GFTError(f"the var benchmark takes --grid 16 (VAR's scales 1..16) or 8 (1,2,3,4,6,8), got {grid}")
    torch.manual_seed(0)
    model = VAR(var_config(preset, vocab_size=vocab, scales=scales, cvae=32, num_classes=1000))
    g = torch.Generator().manual_seed(0)
    n_phi = len(model.quantizer.resi_weight)
    model.load_quantizer({"embedding": torch.randn(vocab, 32, generator=g),
                          "resi_weight": torch.randn(n_phi, 32, 32, 3, 3, generator=g) * 0.05,
                          "resi_bias": torch.zeros(n_phi, 32)})
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a trained-looking head
    return model.eval()


def _bench_tokenizer(vocab, grid, model):
    """The shipped multi-scale VQ tokenizer's architecture on the model's scales and codebook, random weights."""
    return random_tokenizer(shipped("tokenizers/shapes-msvq"), codebook_size=vocab, image_size=4 * grid,
                            scales=list(model.scales), codebook_dim=model.config.cvae)


FAMILY = Family(
    name="var", model_class=VAR, config_fn=var_config, presets=PRESETS, adapter=VARAdapter(), sample=sample,
    to_tokenizer_input=_codes_for_tokenizer, cfg_schedules=CFG_SCHEDULES, importers=("var",),
    description="VAR: next-scale prediction, scale-wise KV cache, one pass per scale",
    bench=BenchSpec(_bench_model, preset="d4", batch=16, vocabs=(4096,), tokenizer=_bench_tokenizer,
                    curve=(CurveSize("d2", repeats=3), CurveSize("d4", repeats=3), CurveSize("d6"))),
)

__all__ = ["FAMILY", "VAR", "VARConfig", "var_config"]
