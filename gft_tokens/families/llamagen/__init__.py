"""LlamaGen-style class-conditional autoregressive transformer: next-token prediction over a raster of VQ codes."""

import torch

from ...paths import shipped
from ...tokenizers import random_tokenizer
from ..base import BenchSpec, CurveSize, Family, SamplerOption
from .adapter import LlamaGenAdapter
from .model import PRESETS, LlamaGen, LlamaGenConfig, llamagen_config
from .sampler import CFG_SCHEDULES, decode_step, forward_passes, sample


def _codes_for_tokenizer(model, codes):
    g = model.config.grid_size
    return codes.view(codes.shape[0], g, g)


def _bench_model(preset, vocab, grid):
    torch.manual_seed(0)
    model = LlamaGen(llamagen_config(preset, vocab_size=vocab, grid_size=grid, num_classes=1000)).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-looking head (the fresh one is all zeros)
    return model


def _bench_tokenizer(vocab, grid, model):
    """The shipped VQ tokenizer's architecture (4x downsampling) at this grid and codebook, random weights."""
    return random_tokenizer(shipped("tokenizers/shapes-vq"), codebook_size=vocab, image_size=4 * grid)


COMPILE = SamplerOption("compile", bool, "run the KV-cached decode steps through torch.compile (a static-shape "
                                         "step: position as a tensor, the whole cache masked; compiles on first "
                                         "use)")

FAMILY = Family(
    name="llamagen", model_class=LlamaGen, config_fn=llamagen_config, presets=PRESETS, adapter=LlamaGenAdapter(),
    sample=sample, to_tokenizer_input=_codes_for_tokenizer, cfg_schedules=CFG_SCHEDULES, sampler_options=(COMPILE,),
    importers=("llamagen-gpt",), description="LlamaGen: next-token prediction, KV-cached, one pass per token",
    bench=BenchSpec(_bench_model, preset="GPT-small", batch=256, tokenizer=_bench_tokenizer,
                    curve=(CurveSize("GPT-tiny", repeats=3), CurveSize("GPT-small", repeats=3),
                           CurveSize("GPT-B", batches=(1, 8, 32))),  # GPT-B at 128: ~6 min on one CPU thread
                    forward_passes=forward_passes, decode_step=decode_step),
)

__all__ = ["FAMILY", "LlamaGen", "LlamaGenConfig", "llamagen_config"]
