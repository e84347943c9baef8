"""LlamaGen-style class-conditional autoregressive transformer: next-token prediction over a raster of VQ codes."""

import torch

from ..base import BenchSpec, Family
from .adapter import LlamaGenAdapter
from .model import PRESETS, LlamaGen, LlamaGenConfig, llamagen_config
from .sampler import CFG_SCHEDULES, sample


def _codes_for_tokenizer(model, codes):
    g = model.config.grid_size
    return codes.view(codes.shape[0], g, g)



def _bench_model(preset, vocab, grid):
    torch.manual_seed(0)
    model = LlamaGen(llamagen_config(preset, vocab_size=vocab, grid_size=grid, num_classes=1000)).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-looking head (the fresh one is all zeros)
    return model


FAMILY = Family(
    name="llamagen", model_class=LlamaGen, config_fn=llamagen_config, presets=PRESETS, adapter=LlamaGenAdapter(),
    sample=sample, to_tokenizer_input=_codes_for_tokenizer, cfg_schedules=CFG_SCHEDULES,
    importers=("llamagen-gpt",), description="LlamaGen: next-token prediction, KV-cached, one pass per token",
    bench=BenchSpec(_bench_model, preset="GPT-small", batch=256),
)

__all__ = ["FAMILY", "LlamaGen", "LlamaGenConfig", "llamagen_config"]
