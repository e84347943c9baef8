"""Multi-scale residual VQ tokenizer (VAR's quantizer): one shared codebook, residual quantised scale by scale.

Encoder features ``f`` (B, C, g, g) at the token grid g are quantised coarse to fine over a schedule of scales
s_0 < s_1 < … < s_{K-1} = g (default 1, 2, 3, 4, 6, 8 for an 8×8 grid; VAR's 1, 2, 3, 4, 5, 6, 8, 10, 13, 16 for
16×16). With ``f̂ = 0`` and the residual ``r = f``, at each scale k:

    r_k  = area-downsample(r, s_k)             (r itself at the last scale)
    z_k  = nearest codebook entry of every vector of r_k (Euclidean)  → the codes of scale k, (B, s_k, s_k)
    h_k  = φ_k(bicubic-upsample(z_k, g))       (no upsampling at the last scale)
    f̂  += h_k ;  r -= h_k

with φ(h) = (1 − ρ)·h + ρ·conv3×3(h), ρ = ``quant_resi`` (0.5). ``share_quant_resi`` picks how many φ convs exist and
which scale uses which, exactly as VAR: 0 = one per scale, 1 = one shared, n = n convs assigned by the nearest of
n ticks to k/(K−1) (for K = 10 and n = 4: [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]). The decoder sees f̂ (straight-through to
the encoder). Training loss per scale, averaged over scales, as VAR: ``β·‖sg(f̂_k) − f‖² + ‖f̂_k − sg(f)‖²`` (the
first term commits the encoder, the second trains the φ convs).

The codebook is :class:`vector_quantize_pytorch.VectorQuantize` (Euclidean, EMA-updated, k-means-initialised,
dead codes replaced). It does the nearest-code lookup at every scale with the codebook frozen; after the last
scale, one EMA update (:meth:`VectorQuantize.update_indices`) uses the residuals of *all* scales with the codes
chosen for them, so a training step moves the shared codebook once, and the k-means initialisation sees vectors of
every scale. ``vector_quantize_pytorch`` also offers ``HierarchicalVQ`` (multi-scale) and ``ResidualVQ``; neither is
VAR's quantizer: ``ResidualVQ`` quantises residuals at one resolution with several codebooks, and
``HierarchicalVQ`` upsamples bilinearly (VAR: bicubic), picks φ by ``round(k/(K−1)·(n−1))`` (for K = 10, n = 4 it
gives scale 7 to φ 2, VAR to φ 3), defaults to one shared φ, trains with per-level commitment to the *residual*
(VAR: to the cumulative f̂), updates the EMA codebook once per level, and runs its k-means initialisation on the
first level it sees — the 1×1 scale, i.e. B vectors for a codebook of 1024. So the scale loop is written here and
VectorQuantize is used for what it does well: the codebook.

The encoder and decoder are the conv stacks of :mod:`gft_tokens.tokenizers.vq`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GFTError
from ..pretrained import GFTPreTrainedModel
from .vq import AutoencoderConfig, Decoder, GridTokenizer, Encoder, check_codes, check_images, ema_codebook

DEFAULT_SCALES = (1, 2, 3, 4, 6, 8)
VAR_SCALES_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's schedule for a 16x16 grid (256px images)


# ---------------------------------------------------------------------------------------------------------------
# The pieces shared with the VAR model (which builds its teacher-forcing inputs from the same f̂)
# ---------------------------------------------------------------------------------------------------------------
def check_scales(scales, grid: int | None = None, where: str = "scales") -> list[int]:
    """Validate a scale schedule: positive, strictly increasing integers ending at ``grid`` (when given)."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, (list, tuple)) or not scales:
        raise GFTError(f"{where} must be a non-empty list of integers such as {list(DEFAULT_SCALES)}, got {scales!r}")
    out = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise GFTError(f"{where} must hold positive integers, got {list(scales)}")
        out.append(int(s))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise GFTError(f"{where} must be strictly increasing (coarse to fine), got {out}")
    if grid is not None and out[-1] != grid:
        raise GFTError(f"{where} {out} must end at the token grid {grid}x{grid} (the last scale is the full grid)")
    return out


def phi_indices(num_scales: int, share_quant_resi: int) -> list[int]:
    """Which φ conv each scale uses (VAR's PhiShared / PhiPartiallyShared / PhiNonShared)."""
    if share_quant_resi == 1:
        return [0] * num_scales
    n = num_scales if share_quant_resi == 0 else share_quant_resi
    if n == 4:
        ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n)
    else:
        ticks = np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    at = [si / (num_scales - 1) if num_scales > 1 else 1.0 for si in range(num_scales)]
    return [int(np.argmin(np.abs(ticks - a))) for a in at]


def num_phi(num_scales: int, share_quant_resi: int, quant_resi: float) -> int:
    if abs(quant_resi) <= 1e-6:
        return 0  # φ is the identity
    return num_scales if share_quant_resi == 0 else share_quant_resi


def apply_phi(h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """φ(h) = (1 − ρ)·h + ρ·conv3×3(h); identity without a conv."""
    if weight is None:
        return h
    r = abs(ratio)
    return h * (1 - r) + F.conv2d(h, weight, bias, padding=1) * r


def upsample_to_grid(h: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic upsampling of one scale's (B, C, s, s) contribution to the (B, C, grid, grid) feature map."""
    return h if h.shape[-1] == grid else F.interpolate(h, size=(grid, grid), mode="bicubic")


def downsample(f: torch.Tensor, size: int) -> torch.Tensor:
    """Area downsampling (VAR's residual / next-input pooling); identity at the full grid."""
    return f if f.shape[-1] == size else F.interpolate(f, size=(size, size), mode="area")


def split_scales(codes: torch.Tensor, scales: Sequence[int], name: str = "codes") -> list[torch.Tensor]:
    """Flat codes (B, Σ s²) — the scales concatenated in raster order — → per-scale maps [(B, s, s), …]."""
    total = sum(s * s for s in scales)
    if codes.ndim != 2 or codes.shape[1] != total:
        raise GFTError(f"{name} must have shape (B, {total}) for scales {list(scales)}, got {tuple(codes.shape)}")
    out, start = [], 0
    for s in scales:
        out.append(codes[:, start:start + s * s].reshape(codes.shape[0], s, s))
        start += s * s
    return out


def flatten_scales(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-scale maps [(B, s, s), …] → flat codes (B, Σ s²)."""
    return torch.cat([m.flatten(1) for m in maps], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------------
class MultiScaleVQConfig(AutoencoderConfig):
    """Configuration of :class:`MultiScaleVQTokenizer`.

    ``channel_mult`` as in :class:`~gft_tokens.tokenizers.VQConfig` (downsample factor 2^(levels−1)); ``scales`` is
    the coarse-to-fine schedule and must end at the token grid ``image_size / downsample``; ``codebook_dim`` is the
    quantised feature width (VAR's Cvae, 32); ``commitment_weight`` is VAR's β (0.25).
    """

    model_type = "gft_msvq_tokenizer"

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 64,
        codebook_size: int = 1024,
        codebook_dim: int = 32,
        scales: tuple[int, ...] | list[int] = DEFAULT_SCALES,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.9,
        dead_code_threshold: float = 2.0,
        kmeans_init: bool = True,
        **kwargs,
    ):
        self.set_autoencoder(image_size, in_channels, channels, channel_mult, num_res_blocks, z_channels)
        self.set_codebook(codebook_size, codebook_dim, commitment_weight, ema_decay, dead_code_threshold, kmeans_init)
        self.scales = list(scales) if isinstance(scales, (list, tuple)) else scales
        self.quant_resi = float(quant_resi)
        self.share_quant_resi = int(share_quant_resi)
        super().__init__(**kwargs)
        self.check_autoencoder()
        self.check_codebook()
        if self.share_quant_resi < 0:
            raise GFTError(f"share_quant_resi must be ≥ 0 (0: one φ per scale, 1: shared, n: n φ), got {self.share_quant_resi}")
        self.scales = check_scales(self.scales, self.image_size // self.downsample, "scales")


class MultiScaleVQTokenizer(GridTokenizer, GFTPreTrainedModel):
    """Images in [-1, 1] ↔ a pyramid of integer code maps, one per scale.

    >>> tok = load_tokenizer("tokenizers/shapes-msvq")
    >>> codes = tok.encode(images)      # [(B, 1, 1), (B, 2, 2), …, (B, 8, 8)] int64
    >>> recon = tok.decode(codes)       # (B, 3, H, W) in [-1, 1]
    """

    config_class = MultiScaleVQConfig
    main_input_name = "images"

    def __init__(self, config: MultiScaleVQConfig):
        super().__init__(config)
        c = config
        self.encoder = Encoder.from_config(c)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_dim, 3, padding=1)
        self.quantize = ema_codebook(
            c,
            use_cosine_sim=False,  # residuals shrink from scale to scale: their norms matter (VAR: L2 lookup)
            commitment_weight=0.0,  # VAR's loss on the cumulative f̂ is computed here
            channel_last=True,
        )
        self.quant_resi = nn.ModuleList(
            nn.Conv2d(c.codebook_dim, c.codebook_dim, 3, padding=1)
            for _ in range(num_phi(len(c.scales), c.share_quant_resi, c.quant_resi))
        )
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.z_channels, 3, padding=1)
        self.decoder = Decoder.from_config(c)
        self._phi_of_scale = phi_indices(len(c.scales), c.share_quant_resi)
        self.post_init()

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def scales(self) -> list[int]:
        return list(self.config.scales)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (h, w) of the finest scale."""
        g = self.config.scales[-1]
        return (g, g)

    @property
    def num_tokens(self) -> int:
        """Tokens per image over all scales, Σ s²."""
        return sum(s * s for s in self.config.scales)

    def describe(self) -> dict:
        """What a token model records about the tokenizer it was trained with."""
        return {**super().describe(), "scales": self.scales, "codebook_dim": self.config.codebook_dim}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] → per-scale codes [(B, s, s) int64 for s in ``scales``]."""
        images = check_images(images, self.config.in_channels, self.downsample)
        grid = images.shape[-1] // self.downsample
        if images.shape[-2] != images.shape[-1] or grid != self.config.scales[-1]:
            raise GFTError(f"images of size {images.shape[-2]}x{images.shape[-1]} give a {images.shape[-2] // self.downsample}"
                           f"x{grid} token grid, but the scale schedule {self.scales} ends at {self.config.scales[-1]}: "
                           f"this tokenizer takes {self.image_size}x{self.image_size} images")
        f = self.quant_conv(self.encoder(images.to(self.device)))
        was_training = self.training
        self.eval()  # never update the codebook (EMA, dead codes) from inference calls
        try:
            codes, _, _ = self._quantize(f)
        finally:
            self.train(was_training)
        return codes

    @torch.no_grad()
    def decode(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale codes [(B, s, s), …] → images (B, 3, H, W) in [-1, 1]."""
        return self.decode_latents(self.codes_to_latents(codes)).clamp(-1.0, 1.0)

    def check_codes(self, codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Validate per-scale code maps: one (B, s, s) integer map per scale, values in [0, codebook_size)."""
        scales = self.config.scales
        if torch.is_tensor(codes):
            raise GFTError(f"codes must be a list of {len(scales)} per-scale maps (B, s, s) for scales {scales}, "
                           f"got one tensor of shape {tuple(codes.shape)} (flat codes: use split_scales)")
        if not isinstance(codes, (list, tuple)):
            raise GFTError(f"codes must be a list of per-scale maps, got {type(codes).__name__}")
        if len(codes) != len(scales):
            raise GFTError(f"expected {len(scales)} per-scale code maps (scales {scales}), got {len(codes)}")
        out = []
        for k, (c, s) in enumerate(zip(codes, scales)):
            c = check_codes(c, self.codebook_size, ndim=3, name=f"codes of scale {k}")
            if tuple(c.shape[1:]) != (s, s):
                raise GFTError(f"codes of scale {k} must have shape (B, {s}, {s}), got {tuple(c.shape)}")
            if out and c.shape[0] != out[0].shape[0]:
                raise GFTError(f"codes of scale {k} have batch size {c.shape[0]}, scale 0 has {out[0].shape[0]}")
            out.append(c.to(self.device))
        return out

    # -- building blocks -------------------------------------------------------------------------------------
    def phi(self, h: torch.Tensor, scale_index: int) -> torch.Tensor:
        if not len(self.quant_resi):
            return h
        conv = self.quant_resi[self._phi_of_scale[scale_index]]
        return apply_phi(h, conv.weight, conv.bias, self.config.quant_resi)

    def contribution(self, codes: torch.Tensor, scale_index: int) -> torch.Tensor:
        """h_k = φ_k(upsample(codebook[codes])) : (B, s, s) codes → (B, codebook_dim, g, g)."""
        z = self.quantize.codebook[codes].permute(0, 3, 1, 2)
        return self.phi(upsample_to_grid(z, self.config.scales[-1]), scale_index)

    def codes_to_latents(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale codes → f̂ (B, codebook_dim, g, g), the sum of every scale's contribution."""
        codes = self.check_codes(codes)
        f_hat = None
        for k, c in enumerate(codes):
            h = self.contribution(c, k)
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    def quantizer_state(self) -> dict:
        """What a VAR model needs to build its inputs the way this quantizer builds f̂ (detached copies)."""
        convs = list(self.quant_resi)
        return {
            "embedding": self.quantize.codebook.detach().clone(),
            "resi_weight": torch.stack([c.weight.detach() for c in convs]) if convs else None,
            "resi_bias": torch.stack([c.bias.detach() for c in convs]) if convs else None,
        }

    def _codebook_ready(self) -> bool:
        return bool(self.quantize._codebook.initted)

    def _quantize(self, f: torch.Tensor):
        """Residual quantisation of f (B, C, g, g) over the scales: (codes per scale, f̂, VAR's loss)."""
        scales = self.config.scales
        f_rest = f.detach().clone()
        if self.training and not self._codebook_ready():
            # k-means on vectors of every scale (the library would otherwise initialise on the first call: 1x1)
            sample = torch.cat([downsample(f_rest, s).permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for s in scales])
            self.quantize(sample[None], freeze_codebook=True)
        f_hat = torch.zeros_like(f)
        codes, rests, loss = [], [], f.new_zeros(())
        for k, s in enumerate(scales):
            rest = downsample(f_rest, s).permute(0, 2, 3, 1).reshape(f.shape[0], s * s, -1)
            _, idx, _ = self.quantize(rest, freeze_codebook=True)
            idx = idx.reshape(f.shape[0], s, s).long()
            h = self.contribution(idx, k)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            codes.append(idx)
            if self.training:
                rests.append(rest.reshape(-1, rest.shape[-1]))
                loss = loss + self.config.commitment_weight * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
        if self.training:
            # one EMA step (and dead-code replacement) for the shared codebook, from the residuals of all scales
            self.quantize.update_indices(torch.cat(rests)[None], torch.cat([c.flatten() for c in codes])[None])
        return codes, f_hat, loss / len(scales)

    def forward(self, images: torch.Tensor):
        """Training pass: returns ``(reconstruction, codes per scale, vq_loss)``; the reconstruction is not clamped."""
        f = self.quant_conv(self.encoder(images))
        codes, f_hat, vq_loss = self._quantize(f)
        f_st = f + (f_hat - f).detach()  # straight-through: decoder sees f̂, encoder gets the decoder's gradient
        return self.decode_latents(f_st), codes, vq_loss
