"""KL-regularised autoencoder: images ↔ a grid of continuous latent vectors (MAR's tokenizer kind).

The encoder and decoder are the VQ tokenizer's (:mod:`gft_tokens.tokenizers.vq`); between them, as in the LDM
``AutoencoderKL`` that MAR uses, ``quant_conv`` gives ``2·C`` moments per position — the mean and log-variance of a
diagonal Gaussian posterior — and ``post_quant_conv`` maps a C-channel latent back to the decoder's width.

Training loss (:mod:`gft_tokens.tokenizers.trainer`): reconstruction (MSE + a small L1 term) plus
``kl_weight``·KL(q(z | x) ‖ N(0, I)), the KL averaged over latent elements.

Latents are handed to token models *normalised*: ``encode`` returns the posterior mean times ``latent_scale``
(MAR: ``posterior.sample() * 0.2325``), a factor measured on training images after training (:meth:`calibrate`) so
that the latents have unit standard deviation; ``decode`` divides by it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import GFTError
from ..pretrained import GFTPreTrainedModel
from .vq import AutoencoderConfig, Decoder, Encoder, GridTokenizer


class KLConfig(AutoencoderConfig):
    """Configuration of :class:`KLTokenizer` (``channel_mult``: as :class:`~gft_tokens.tokenizers.vq.VQConfig`)."""

    model_type = "gft_kl_tokenizer"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 64,
        latent_channels: int = 8,
        kl_weight: float = 1e-4,
        latent_scale: float = 1.0,
        **kwargs,
    ):
        self.set_autoencoder(image_size, in_channels, channels, channel_mult, num_res_blocks, z_channels)
        self.latent_channels = int(latent_channels)
        self.kl_weight = float(kl_weight)
        self.latent_scale = float(latent_scale)
        super().__init__(**kwargs)
        self.check_autoencoder()
        if self.latent_channels < 1:
            raise GFTError(f"latent_channels must be at least 1, got {self.latent_channels}")
        if not self.kl_weight >= 0:
            raise GFTError(f"kl_weight must be ≥ 0, got {self.kl_weight}")
        if not (self.latent_scale > 0 and self.latent_scale < float("inf")):
            raise GFTError(f"latent_scale must be a positive finite number, got {self.latent_scale}")


class DiagonalGaussian:
    """q(z | x) from ``moments`` (B, 2C, h, w): mean and log-variance (clamped to [-30, 20], as LDM's)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per element, averaged: a scalar ≥ 0."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean()


def check_latents(latents, channels: int, grid: tuple[int, int] | None = None, name: str = "latents") -> torch.Tensor:
    """Validate a float latent grid (B, C, h, w) with ``channels`` channels (and ``grid`` when given)."""
    if not torch.is_tensor(latents):
        raise GFTError(f"{name} must be a torch tensor, got {type(latents).__name__}")
    if not latents.is_floating_point():
        raise GFTError(f"{name} must be a float tensor (continuous latents), got dtype {latents.dtype}")
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise GFTError(f"{name} must have shape (B, {channels}, h, w), got {tuple(latents.shape)}")
    if grid is not None and tuple(latents.shape[-2:]) != tuple(grid):
        raise GFTError(f"{name} grid is {tuple(latents.shape[-2:])}, expected {tuple(grid)}")
    if not torch.isfinite(latents).all():
        raise GFTError(f"{name} contain NaN or infinite values")
    return latents.float()


class KLTokenizer(GridTokenizer, GFTPreTrainedModel):
    """Images in [-1, 1] ↔ normalised continuous latents (B, C, h, w).

    >>> tok = load_tokenizer("tokenizers/shapes-kl")
    >>> z = tok.encode(images)          # (B, 8, 8, 8) float, about unit std
    >>> recon = tok.decode(z)           # (B, 3, 32, 32) in [-1, 1]
    """

    config_class = KLConfig
    main_input_name = "images"
    loss_name = "kl_loss"  # what the tokenizer trainer calls the third output of forward

    def __init__(self, config: KLConfig):
        super().__init__(config)
        c = config
        self.encoder = Encoder.from_config(c)
        self.quant_conv = nn.Conv2d(c.z_channels, 2 * c.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.z_channels, 1)
        self.decoder = Decoder.from_config(c)
        self.post_init()

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def describe(self) -> dict:
        """What a token model records about the tokenizer it was trained with."""
        return {"type": self.config.model_type, "latent_channels": self.latent_channels,
                "grid_size": list(self.grid_size), "image_size": self.image_size}

    def posterior(self, images: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) of *unnormalised* latents."""
        return DiagonalGaussian(self.quant_conv(self.encoder(images)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] → normalised latents (B, C, H/f, W/f): the posterior mean (or a draw,
        ``sample=True``) times ``latent_scale``."""
        q = self.posterior(self.checked_images(images))
        z = q.sample(generator) if sample else q.mean
        return z * self.config.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) → images (B, 3, h·f, w·f) in [-1, 1]."""
        latents = check_latents(latents, self.latent_channels, self.grid_size)
        return self.decode_latents(latents.to(self.device) / self.config.latent_scale).clamp(-1.0, 1.0)

    # -- training (decode_latents, of unnormalised latents: GridTokenizer) -----------------------------------
    def forward(self, images: torch.Tensor):
        """Training pass: ``(reconstruction, sampled latents, kl_weight·KL)``; the reconstruction is not clamped."""
        q = self.posterior(images)
        z = q.sample()
        return self.decode_latents(z), z, self.config.kl_weight * q.kl()

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 500) -> float:
        """Set ``latent_scale`` to 1 / std of posterior draws on ``images`` (MAR's vae scale factor); returns it."""
        was_training = self.training
        self.eval()
        try:
            draws = torch.cat([self.posterior(images[i:i + batch_size].to(self.device)).sample()
                               for i in range(0, len(images), batch_size)])
        finally:
            self.train(was_training)
        self.config.latent_scale = float(1.0 / draws.float().std())
        return self.config.latent_scale
