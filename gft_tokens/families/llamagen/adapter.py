"""How the training loop feeds a LlamaGen model: raster codes (B, N), teacher-forced next-token logits."""

from __future__ import annotations

from ..base import LossInputs, RasterAdapter
from .model import llamagen_config


class LlamaGenAdapter(RasterAdapter):
    family = "llamagen"
    config_fn = staticmethod(llamagen_config)

    def loss_inputs(self, model, codes, generator):
        flat = codes.flatten(1)
        return LossInputs(lambda cond, beta: model.head_inputs(flat, cond, beta), flat)
