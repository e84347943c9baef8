"""How the training loop feeds a VAR model: every scale's codes concatenated, (L,) = Σ s² per image; the model
reads its inputs through a frozen copy of the tokenizer's quantizer (codebook + φ convs), loaded in
``prepare_model``."""

from __future__ import annotations

from ...errors import GFTError
from ..base import Adapter, LossInputs
from .model import var_config


class VARAdapter(Adapter):
    derived_keys = (*Adapter.derived_keys, "scales", "cvae", "quant_resi", "share_quant_resi")

    def config(self, preset, tokenizer, num_classes, overrides):
        scales = getattr(tokenizer, "scales", None)
        if scales is None or not hasattr(tokenizer, "quantizer_state"):
            raise GFTError(f"VAR needs a multi-scale tokenizer (e.g. tokenizers/shapes-msvq); this one "
                           f"({tokenizer.describe()['type']}) has a single scale")
        t = tokenizer.config
        return var_config(preset, vocab_size=tokenizer.codebook_size, scales=list(scales), cvae=t.codebook_dim,
                          quant_resi=t.quant_resi, share_quant_resi=t.share_quant_resi, num_classes=num_classes,
                          tokenizer=tokenizer.describe(), **overrides)

    def token_shape(self, config):
        return (config.num_tokens,)

    def loss_inputs(self, model, codes, generator):
        return LossInputs(lambda cond, beta: model.head_inputs(codes, cond, beta), codes)

    def prepare_model(self, model, tokenizer):
        if not hasattr(tokenizer, "quantizer_state"):
            raise GFTError("VAR needs a multi-scale tokenizer (e.g. tokenizers/shapes-msvq)")
        model.load_quantizer(tokenizer)
