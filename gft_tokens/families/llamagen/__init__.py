"""LlamaGen-style class-conditional autoregressive transformer: next-token prediction over a raster of VQ codes."""

from ..base import BenchSpec, CurveSize, Family, SamplerOption, raster_bench_model, raster_to_grid, vq_bench_tokenizer
from .adapter import LlamaGenAdapter
from .model import PRESETS, LlamaGen, LlamaGenConfig, llamagen_config
from .sampler import CFG_SCHEDULES, decode_step, forward_passes, sample

COMPILE = SamplerOption("compile", bool, "run the KV-cached decode steps through torch.compile (a static-shape "
                                         "step: position as a tensor, the whole cache masked; compiles on first "
                                         "use)")

FAMILY = Family(
    name="llamagen", model_class=LlamaGen, config_fn=llamagen_config, presets=PRESETS, adapter=LlamaGenAdapter(),
    sample=sample, to_tokenizer_input=raster_to_grid, cfg_schedules=CFG_SCHEDULES, sampler_options=(COMPILE,),
    importers=("llamagen-gpt",), description="LlamaGen: next-token prediction, KV-cached, one pass per token",
    bench=BenchSpec(raster_bench_model(LlamaGen, llamagen_config), preset="GPT-small", batch=256,
                    tokenizer=vq_bench_tokenizer,
                    curve=(CurveSize("GPT-tiny", repeats=3), CurveSize("GPT-small", repeats=3),
                           CurveSize("GPT-B", batches=(1, 8, 32))),  # GPT-B at 128: ~6 min on one CPU thread
                    forward_passes=forward_passes, decode_step=decode_step),
)

__all__ = ["FAMILY", "LlamaGen", "LlamaGenConfig", "llamagen_config"]
