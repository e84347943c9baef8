"""How the training loop feeds a masked model: raster codes (B, N) and a fresh random mask per batch."""

from __future__ import annotations

from ..base import LossInputs, RasterAdapter
from .model import draw_training_mask, masked_config


class MaskedAdapter(RasterAdapter):
    family = "masked"
    config_fn = staticmethod(masked_config)

    def loss_inputs(self, model, codes, generator):
        flat = codes.flatten(1)
        c = model.config
        # drawn once per batch and shared by the objective's conditional and unconditional passes
        mask = draw_training_mask(flat.shape[0], flat.shape[1], generator, c.mask_ratio_min,
                                  c.mask_ratio_std).to(flat.device)
        return LossInputs(lambda cond, beta: model.head_inputs(flat, cond, beta, mask=mask), flat, mask)
