"""Text-to-image LlamaGen: LlamaGen's network with a caption prefix (LlamaGen's t2i conditioning) and GFT's β."""

from ..base import Family, raster_to_grid
from .adapter import T2IAdapter
from .model import PRESETS, T2IConfig, T2ILlamaGen, caption_attention_mask, t2i_config
from .sampler import CFG_SCHEDULES, sample

FAMILY = Family(
    name="t2i", model_class=T2ILlamaGen, config_fn=t2i_config, presets=PRESETS, adapter=T2IAdapter(),
    sample=sample, to_tokenizer_input=raster_to_grid, cfg_schedules=CFG_SCHEDULES,
    description="LlamaGen text-to-image: caption-feature prefix, KV-cached, one pass per token",
    text_conditioned=True,
)

__all__ = ["FAMILY", "T2IConfig", "T2ILlamaGen", "caption_attention_mask", "t2i_config"]
