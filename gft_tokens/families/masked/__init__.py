"""MAR/MaskGIT-style masked model over VQ codes: bidirectional encoder/decoder, parallel decoding."""

from ..base import BenchSpec, CurveSize, Family, SamplerOption, raster_bench_model, raster_to_grid, vq_bench_tokenizer
from .adapter import MaskedAdapter
from .model import PRESETS, MaskedTokenModel, masked_config
from .sampler import CFG_SCHEDULES, ORDERS, sample

STEPS = SamplerOption("steps", int, "parallel decoding steps, 1 .. number of tokens (default: 16)", min=1)

FAMILY = Family(
    name="masked", model_class=MaskedTokenModel, config_fn=masked_config, presets=PRESETS, adapter=MaskedAdapter(),
    sample=sample, to_tokenizer_input=raster_to_grid, cfg_schedules=CFG_SCHEDULES,
    sampler_options=(
        STEPS,
        SamplerOption("order", str, "which masked tokens to fix each step: MAR's random order or MaskGIT's "
                                    "confidence (default: random)", choices=ORDERS),
        SamplerOption("choice_temperature", float, "Gumbel noise on the confidence order, annealed to 0 "
                                                   "(default: 4.5)", min=0),
    ),
    description="masked tokens (MAR/MaskGIT): one pass per decoding step",
    bench=BenchSpec(raster_bench_model(MaskedTokenModel, masked_config), preset="MAR-tiny", batch=32, repeats=3,
                    cache=False, options={"steps": 16},
                    variants={"": {"order": "random"}, "_confidence": {"order": "confidence"}},
                    tokenizer=vq_bench_tokenizer,
                    curve=(CurveSize("MAR-nano", repeats=3), CurveSize("MAR-tiny", repeats=3), CurveSize("MAR-small"))),
)

__all__ = ["FAMILY", "MaskedTokenModel", "masked_config"]
