"""Single-scale VQ tokenizer: conv encoder → l2-normalised low-dimensional codebook → conv decoder.

The quantiser follows LlamaGen's VQ design (codes of dimension 8, l2-normalised, i.e. cosine-similarity lookup)
and is :class:`vector_quantize_pytorch.VectorQuantize` with an EMA-updated codebook, k-means initialisation and
dead-code replacement. The encoder's ``quant_conv`` projects straight to the code dimension, so a code index maps
to its (normalised) codebook row and ``post_quant_conv`` — no hidden projection inside the quantiser.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig
from vector_quantize_pytorch import VectorQuantize

from ..errors import GFTError
from ..pretrained import GFTPreTrainedModel


class AutoencoderConfig(PretrainedConfig):
    """The encoder/decoder fields every tokenizer config here shares (:class:`Encoder` / :class:`Decoder`).

    ``channel_mult`` has one entry per resolution level; each level but the last halves the resolution, so the
    downsample factor is ``2 ** (len(channel_mult) - 1)`` (``(1, 2, 2)`` → 4, ``(1, 1, 2, 2)`` → 8).
    """

    def set_autoencoder(self, image_size, in_channels, channels, channel_mult, num_res_blocks, z_channels) -> None:
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.channels = int(channels)
        self.channel_mult = [int(m) for m in channel_mult]
        self.num_res_blocks = int(num_res_blocks)
        self.z_channels = int(z_channels)

    def check_autoencoder(self) -> None:
        if not self.channel_mult:
            raise GFTError("channel_mult needs at least one level")
        if self.image_size % self.downsample:
            raise GFTError(f"image_size {self.image_size} is not divisible by the downsample factor {self.downsample}")

    def set_codebook(self, codebook_size, codebook_dim, commitment_weight, ema_decay, dead_code_threshold,
                     kmeans_init) -> None:
        """The fields of a :class:`vector_quantize_pytorch.VectorQuantize` codebook (EMA-updated, k-means
        initialised, dead codes replaced): the single-scale and the multi-scale VQ tokenizers'."""
        self.codebook_size = int(codebook_size)
        self.codebook_dim = int(codebook_dim)
        self.commitment_weight = float(commitment_weight)
        self.ema_decay = float(ema_decay)
        self.dead_code_threshold = float(dead_code_threshold)
        self.kmeans_init = bool(kmeans_init)

    def check_codebook(self) -> None:
        if self.codebook_size < 2:
            raise GFTError(f"codebook_size must be at least 2, got {self.codebook_size}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class GridTokenizer:
    """Mixin of the image tokenizers: sizes read from the config (``image_size``, ``downsample``, codebook), the
    input check of ``encode`` and the decoder end (``post_quant_conv`` then ``decoder``)."""

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (h, w) for images of the configured ``image_size``."""
        g = self.config.image_size // self.config.downsample
        return (g, g)

    def describe(self) -> dict:
        """What a token model records about the tokenizer it was trained with."""
        return {"type": self.config.model_type, "codebook_size": self.codebook_size,
                "grid_size": list(self.grid_size), "image_size": self.image_size}

    def checked_images(self, images, hint: str = "") -> torch.Tensor:
        """``images`` validated (:func:`check_images`), of the configured ``image_size`` (else an error ending in
        ``hint``), on the model's device."""
        images = check_images(images, self.config.in_channels, self.downsample)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            h, w = images.shape[-2:]
            raise GFTError(f"images are {h}x{w}, this tokenizer encodes {self.image_size}x{self.image_size} "
                           f"images{hint}")
        return images.to(self.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) → images (B, 3, h·f, w·f), not clamped."""
        return self.decoder(self.post_quant_conv(latents))


class VQConfig(AutoencoderConfig):
    """Configuration of :class:`VQTokenizer` (encoder/decoder fields: :class:`AutoencoderConfig`)."""

    model_type = "gft_vq_tokenizer"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        channels: int = 64,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 64,
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.9,
        dead_code_threshold: float = 2.0,
        kmeans_init: bool = True,
        **kwargs,
    ):
        self.set_autoencoder(image_size, in_channels, channels, channel_mult, num_res_blocks, z_channels)
        self.set_codebook(codebook_size, codebook_dim, commitment_weight, ema_decay, dead_code_threshold, kmeans_init)
        super().__init__(**kwargs)
        self.check_autoencoder()
        self.check_codebook()


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvStack(nn.Module):
    """``conv_in`` → ``blocks`` → GroupNorm, SiLU → ``conv_out``: the shape of :class:`Encoder` and :class:`Decoder`,
    whose constructors take (image channels, channels, channel_mult, num_res_blocks, z_channels)."""

    @classmethod
    def from_config(cls, c: AutoencoderConfig) -> "ConvStack":
        """The stack of an :class:`AutoencoderConfig` (``c.in_channels`` image channels)."""
        return cls(c.in_channels, c.channels, c.channel_mult, c.num_res_blocks, c.z_channels)

    def forward(self, x):
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Encoder(ConvStack):
    """Images (B, C, H, W) → features (B, z_channels, H/f, W/f)."""

    def __init__(self, in_channels, channels, channel_mult, num_res_blocks, z_channels):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        layers, c = [], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, channels * mult))
                c = channels * mult
            if level != len(channel_mult) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c), ResBlock(c, c)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, z_channels, 3, padding=1)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(ConvStack):
    """Features (B, z_channels, h, w) → images (B, C, h·f, w·f) (not yet clamped)."""

    def __init__(self, out_channels, channels, channel_mult, num_res_blocks, z_channels):
        super().__init__()
        c = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        layers = [ResBlock(c, c), ResBlock(c, c)]
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(c, channels * mult))
                c = channels * mult
            if level != 0:
                layers.append(Upsample(c))
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)


def ema_codebook(c: AutoencoderConfig, **kwargs) -> VectorQuantize:
    """The :class:`VectorQuantize` of a config's codebook fields (:meth:`AutoencoderConfig.set_codebook`): EMA
    decay, k-means initialisation, dead-code threshold, no cross-process sync; ``kwargs``: the lookup (cosine or
    Euclidean), the commitment weight and the input layout."""
    return VectorQuantize(dim=c.codebook_dim, codebook_size=c.codebook_size, decay=c.ema_decay,
                          kmeans_init=c.kmeans_init, threshold_ema_dead_code=c.dead_code_threshold,
                          sync_codebook=False, **kwargs)


def check_images(images, in_channels: int, downsample: int, name: str = "images") -> torch.Tensor:
    """Validate a batch of images in [-1, 1] (B, C, H, W); return it as float32."""
    if not torch.is_tensor(images):
        raise GFTError(f"{name} must be a torch tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise GFTError(f"{name} must have shape (B, {in_channels}, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise GFTError(f"{name} is an empty batch (shape {tuple(images.shape)}): give at least one image")
    if images.shape[1] != in_channels:
        raise GFTError(f"{name} must have {in_channels} channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    h, w = images.shape[-2:]
    if h % downsample or w % downsample:
        raise GFTError(f"{name} size {h}x{w} is not divisible by the tokenizer's downsample factor {downsample}")
    if not images.is_floating_point():
        raise GFTError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    images = images.float()
    if not torch.isfinite(images).all():
        raise GFTError(f"{name} contain NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1.5 or hi > 1.5:
        raise GFTError(
            f"{name} must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] (convert uint8 images with x/127.5 - 1)"
        )
    return images


def check_codes(codes, codebook_size: int, ndim: int = 3, name: str = "codes") -> torch.Tensor:
    """Validate integer codes in [0, codebook_size) with ``ndim`` dimensions; return them as int64."""
    if not torch.is_tensor(codes):
        raise GFTError(f"{name} must be a torch tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise GFTError(f"{name} must be an integer tensor, got dtype {codes.dtype}")
    if codes.ndim != ndim:
        raise GFTError(f"{name} must have {ndim} dimensions, got shape {tuple(codes.shape)}")
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= codebook_size:
            bad = lo if lo < 0 else hi
            raise GFTError(f"{name} must lie in [0, {codebook_size}) (the codebook size), found {bad}")
    return codes.long()


class VQTokenizer(GridTokenizer, GFTPreTrainedModel):
    """Images in [-1, 1] ↔ a grid of integer codes.

    >>> tok = load_tokenizer("tokenizers/shapes-vq")
    >>> codes = tok.encode(images)      # (B, h, w) int64
    >>> recon = tok.decode(codes)       # (B, 3, H, W) in [-1, 1]
    """

    config_class = VQConfig
    main_input_name = "images"

    def __init__(self, config: VQConfig):
        super().__init__(config)
        c = config
        self.encoder = Encoder.from_config(c)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_dim, 1)
        self.quantize = ema_codebook(c, use_cosine_sim=True, commitment_weight=c.commitment_weight,
                                     accept_image_fmap=True)
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.z_channels, 1)
        self.decoder = Decoder.from_config(c)
        self.post_init()

    # -- public API (sizes, describe(): GridTokenizer) ------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] → codes (B, H/f, W/f) int64."""
        images = self.checked_images(images, f" (to a {self.grid_size[0]}x{self.grid_size[1]} grid); resize them first")
        z = self.quant_conv(self.encoder(images))
        was_training = self.quantize.training
        self.quantize.eval()  # never update the codebook (EMA, dead codes) from inference calls
        try:
            _, codes, _ = self.quantize(z)
        finally:
            self.quantize.train(was_training)
        return codes.long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) in [0, codebook_size) → images (B, 3, h·f, w·f) in [-1, 1]."""
        codes = check_codes(codes, self.codebook_size)
        return self.decode_latents(self.codes_to_latents(codes.to(self.device))).clamp(-1.0, 1.0)

    # -- building blocks (used by training; decode_latents: GridTokenizer) -----------------------------------
    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) → normalised codebook vectors (B, codebook_dim, h, w)."""
        return self.quantize.codebook[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, images: torch.Tensor):
        """Training pass: returns ``(reconstruction, codes, vq_loss)``; the reconstruction is not clamped."""
        z = self.quant_conv(self.encoder(images))
        quantized, codes, vq_loss = self.quantize(z)
        return self.decode_latents(quantized), codes, vq_loss.sum()
