"""How the training loop feeds continuous MAR: a KL tokenizer's latents (C, h, w) per image as tokens (B, N, C),
a fresh random mask per batch as the masked family, and the ε-MSE plug-in of the GFT objective."""

from __future__ import annotations

from ...errors import GFTError
from ...objectives import EPS_MSE
from ..base import Adapter, LossInputs, square_grid
from ..masked.model import draw_training_mask
from .model import grid_to_tokens, mar_config


class MARAdapter(Adapter):
    inputs = "latents"
    derived_keys = ("token_dim", "grid_size", "num_classes", "tokenizer")
    loss = EPS_MSE

    def config(self, preset, tokenizer, num_classes, overrides):
        channels = getattr(tokenizer, "latent_channels", None)
        if channels is None:
            raise GFTError(f"the mar family needs a continuous tokenizer (e.g. tokenizers/shapes-kl); this one "
                           f"({tokenizer.describe()['type']}) gives integer codes — use the masked family for those")
        grid = square_grid(tokenizer, "mar")
        return mar_config(preset, token_dim=channels, grid_size=grid, num_classes=num_classes,
                          tokenizer=tokenizer.describe(), **overrides)

    def token_shape(self, config):
        return (config.token_dim, config.grid_size, config.grid_size)

    def check_data(self, data, config) -> None:
        if not data.codes.is_floating_point():
            raise GFTError("the mar family trains on continuous latents, the data holds integer codes")
        if tuple(data.codes.shape[2:]) != self.token_shape(config):
            raise GFTError(f"latents have shape {tuple(data.codes.shape[2:])} per image, the model expects "
                           f"{self.token_shape(config)} (channels, grid, grid)")

    def loss_inputs(self, model, latents, generator):
        tokens = grid_to_tokens(latents)
        c = model.config
        # drawn once per batch and shared by the objective's conditional and unconditional passes
        mask = draw_training_mask(tokens.shape[0], tokens.shape[1], generator, c.mask_ratio_min,
                                  c.mask_ratio_std).to(tokens.device)
        return LossInputs(lambda cond, beta: model.diffusion_inputs(tokens, cond, beta, mask=mask), tokens, mask)
