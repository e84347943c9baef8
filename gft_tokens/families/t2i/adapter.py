"""How the training loop feeds a text-to-image LlamaGen: raster codes (B, N) with a Caption as the condition."""

from __future__ import annotations

from ..llamagen.adapter import LlamaGenAdapter
from .model import t2i_config


class T2IAdapter(LlamaGenAdapter):
    family = "t2i"
    config_fn = staticmethod(t2i_config)
    derived_keys = LlamaGenAdapter.derived_keys + ("caption_dim", "caption_len", "text_encoder")
