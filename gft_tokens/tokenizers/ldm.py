"""The LDM-style conv encoder/decoder (with self-attention) of the released VAR VQVAE and MAR KL-16 VAE, and the
two tokenizers built on it.

Both released autoencoders use the latent-diffusion ``Encoder``/``Decoder`` layout: ``conv_in`` → levels of
``num_res_blocks`` ResNet blocks (GroupNorm(32, eps 1e-6) → SiLU → conv3×3, twice, 1×1 ``nin_shortcut`` when the
width changes), a self-attention block after each ResNet block of the deepest level, a stride-2 conv (input
padded right/bottom by one) between levels → ``mid`` (ResNet, attention, ResNet) → GroupNorm → SiLU →
``conv_out``; the decoder mirrors it with ``num_res_blocks + 1`` blocks per level and nearest ×2 upsampling + conv.
Attention is single-head over the h·w positions of one image, q/k/v from one fused 1×1 conv (``qkv``, VAR's
layout; LDM's separate ``q``/``k``/``v`` convs are concatenated by the importer), scaled by C^-½, then ``proj_out``,
residual. Parameter names are the official ones, so a converted state dict is the released one key for key.

* :class:`VARVQVAE` — VAR's multi-scale VQVAE: this encoder/decoder (attention at the deepest level of both, no
  double-z), ``quant_conv``/``post_quant_conv`` (3×3), and VAR's multi-scale residual quantizer with a plain
  codebook (``quantize.embedding``, Euclidean nearest code) and partially shared φ convs
  (``quantize.quant_resi.qresi_ls.K``) — the scale loop, φ assignment and interpolations of
  :class:`~gft_tokens.tokenizers.multiscale.MultiScaleVQTokenizer`, whose API it keeps (encode → per-scale maps,
  decode, ``quantizer_state`` for the VAR model). Inference only: VAR's VQVAE training is not reproduced here.
* :class:`LDMKLTokenizer` — MAR's KL-16 ``AutoencoderKL``: encoder with double-z output and attention at the
  deepest level, decoder with attention in ``mid`` only (MAR builds it with ``attn_resolutions=()``), 1×1
  ``quant_conv`` (2C → 2C moments) and ``post_quant_conv`` (C → C); the API of
  :class:`~gft_tokens.tokenizers.kl.KLTokenizer` (normalised latents, ``latent_scale`` = MAR's 0.2325).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GFTError
from ..pretrained import GFTPreTrainedModel
from .llamagen_vq import Downsample, Upsample  # the same stride-2 / nearest-2x convs as LlamaGen's VQ
from .kl import KLConfig, KLTokenizer
from .multiscale import (MultiScaleVQConfig, MultiScaleVQTokenizer, apply_phi, downsample, num_phi, phi_indices)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """x + proj_out(softmax(qᵀk / √C) v) over the h·w positions (one head), q/k/v from the fused ``qkv`` conv."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # (B, hw, C) each
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class _Level(nn.Module):
    def __init__(self, blocks, attn, resample):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if resample is not None:
            self.add_module(resample[0], resample[1])

    def run(self, h):
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class LDMEncoder(nn.Module):
    """Images (B, in, H, W) → (B, z_out, H/f, W/f), f = 2^(levels−1)."""

    def __init__(self, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_out: int,
                 attn_last: bool = True):
        super().__init__()
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, c = nn.ModuleList(), ch
        for i, m in enumerate(ch_mult):
            blocks, attn = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c, ch * m))
                c = ch * m
                if i == last and attn_last:
                    attn.append(AttnBlock(c))
            self.down.append(_Level(blocks, attn, ("downsample", Downsample(c)) if i != last else None))
        self.mid = _Mid(c)
        self.norm_out, self.conv_out = _norm(c), nn.Conv2d(c, z_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class LDMDecoder(nn.Module):
    """(B, z_in, h, w) → images (B, out, h·f, w·f); ``up`` indexed by level as LDM's (0 = full resolution)."""

    def __init__(self, out_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_in: int,
                 attn_last: bool = True):
        super().__init__()
        last = len(ch_mult) - 1
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_in, c, 3, padding=1)
        self.mid = _Mid(c)
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):
            blocks, attn = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(c, ch * ch_mult[i]))
                c = ch * ch_mult[i]
                if i == last and attn_last:
                    attn.append(AttnBlock(c))
            levels[i] = _Level(blocks, attn, ("upsample", Upsample(c)) if i != 0 else None)
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(c), nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _check_groups(channels: int, channel_mult) -> None:
    bad = [channels * m for m in channel_mult if (channels * m) % 32]
    if bad:
        raise GFTError(f"the LDM blocks use GroupNorm(32): every width channels·mult must be a multiple of 32, "
                       f"got {bad[0]} (channels {channels}, channel_mult {list(channel_mult)})")


# ---------------------------------------------------------------------------------------------------------------
# VAR's VQVAE
# ---------------------------------------------------------------------------------------------------------------
class VARVQVAEConfig(MultiScaleVQConfig):
    """:class:`~gft_tokens.tokenizers.multiscale.MultiScaleVQConfig` with the released VQVAE's sizes: ``channels``
    160, ``channel_mult`` (1, 1, 2, 2, 4), 2 ResNet blocks, codebook 4096 × 32, 10 scales, 4 φ convs; the encoder
    outputs ``codebook_dim`` channels directly (``z_channels`` = ``codebook_dim``); ``quant_conv_ks`` 3."""

    model_type = "gft_var_vqvae"

    def __init__(self, image_size: int = 256, in_channels: int = 3, channels: int = 160,
                 channel_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int | None = None,
                 codebook_size: int = 4096, codebook_dim: int = 32, scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 quant_resi: float = 0.5, share_quant_resi: int = 4, quant_conv_ks: int = 3,
                 commitment_weight: float = 0.25, ema_decay: float = 0.9, dead_code_threshold: float = 0.0,
                 kmeans_init: bool = False, **kwargs):
        if z_channels is not None and int(z_channels) != int(codebook_dim):
            raise GFTError(f"VAR's VQVAE encoder outputs codebook_dim channels: z_channels {z_channels} != "
                           f"codebook_dim {codebook_dim}")
        self.quant_conv_ks = int(quant_conv_ks)
        super().__init__(image_size=image_size, in_channels=in_channels, channels=channels,
                         channel_mult=channel_mult, num_res_blocks=num_res_blocks, z_channels=codebook_dim,
                         codebook_size=codebook_size, codebook_dim=codebook_dim, scales=scales,
                         quant_resi=quant_resi, share_quant_resi=share_quant_resi,
                         commitment_weight=commitment_weight, ema_decay=ema_decay,
                         dead_code_threshold=dead_code_threshold, kmeans_init=kmeans_init, **kwargs)
        _check_groups(self.channels, self.channel_mult)
        if self.quant_conv_ks % 2 != 1:
            raise GFTError(f"quant_conv_ks must be odd, got {self.quant_conv_ks}")


class VARQuantizer(nn.Module):
    """The released quantizer's parameters: ``embedding`` (V, C) and ``quant_resi.qresi_ls.K`` (φ convs)."""

    def __init__(self, vocab: int, dim: int, n_phi: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.quant_resi = nn.Module()
        self.quant_resi.qresi_ls = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(n_phi))

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight


class VARVQVAE(MultiScaleVQTokenizer):
    """VAR's released VQVAE (``vae_ch160v4096z32.pth``) as a multi-scale tokenizer: images ↔ per-scale code maps.

    >>> tok = load_tokenizer("tokenizers/var-vqvae")   # from scripts/import_checkpoint.py --format var-vqvae
    >>> codes = tok.encode(images)                     # [(B, 1, 1), (B, 2, 2), …, (B, 16, 16)]
    """

    config_class = VARVQVAEConfig

    def __init__(self, config: VARVQVAEConfig):
        GFTPreTrainedModel.__init__(self, config)  # the networks below replace MultiScaleVQTokenizer's
        c, ks = config, config.quant_conv_ks
        self.encoder = LDMEncoder(c.in_channels, c.channels, c.channel_mult, c.num_res_blocks, c.codebook_dim)
        self.quant_conv = nn.Conv2d(c.codebook_dim, c.codebook_dim, ks, padding=ks // 2)
        self.quantize = VARQuantizer(c.codebook_size, c.codebook_dim,
                                     num_phi(len(c.scales), c.share_quant_resi, c.quant_resi))
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.codebook_dim, ks, padding=ks // 2)
        self.decoder = LDMDecoder(c.in_channels, c.channels, c.channel_mult, c.num_res_blocks, c.codebook_dim)
        self._phi_of_scale = phi_indices(len(c.scales), c.share_quant_resi)
        self.post_init()

    def _convs(self):
        return list(self.quantize.quant_resi.qresi_ls)

    def phi(self, h: torch.Tensor, scale_index: int) -> torch.Tensor:
        convs = self._convs()
        if not convs:
            return h
        conv = convs[self._phi_of_scale[scale_index]]
        return apply_phi(h, conv.weight, conv.bias, self.config.quant_resi)

    def quantizer_state(self) -> dict:
        convs = self._convs()
        return {"embedding": self.quantize.codebook.detach().clone(),
                "resi_weight": torch.stack([c.weight.detach() for c in convs]) if convs else None,
                "resi_bias": torch.stack([c.bias.detach() for c in convs]) if convs else None}

    def _quantize(self, f: torch.Tensor):
        """VAR's scale loop with a nearest-code (Euclidean) lookup: (codes per scale, f̂, 0)."""
        emb = self.quantize.codebook
        e2 = emb.pow(2).sum(1)
        f_rest, f_hat, codes = f.clone(), torch.zeros_like(f), []
        for k, s in enumerate(self.config.scales):
            rest = downsample(f_rest, s).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            dist = rest.pow(2).sum(1, keepdim=True) + e2 - 2.0 * rest @ emb.t()
            idx = dist.argmin(1).view(f.shape[0], s, s)
            h = self.contribution(idx, k)
            f_hat, f_rest = f_hat + h, f_rest - h
            codes.append(idx)
        return codes, f_hat, f.new_zeros(())

    def _codebook_ready(self) -> bool:
        return True

    def forward(self, images: torch.Tensor):
        raise GFTError("VARVQVAE is the released VQVAE for encoding/decoding; training it is not supported here "
                       "(train a MultiScaleVQTokenizer instead)")


# ---------------------------------------------------------------------------------------------------------------
# MAR's KL-16
# ---------------------------------------------------------------------------------------------------------------
class LDMKLConfig(KLConfig):
    """:class:`~gft_tokens.tokenizers.kl.KLConfig` with MAR's KL-16 sizes: ``channels`` 128, ``channel_mult``
    (1, 1, 2, 2, 4), 2 ResNet blocks, 16 latent channels, ``latent_scale`` 0.2325; ``z_channels`` = latent
    channels (the encoder outputs 2·C, the decoder takes C)."""

    model_type = "gft_ldm_kl_tokenizer"

    def __init__(self, image_size: int = 256, in_channels: int = 3, channels: int = 128,
                 channel_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int | None = None,
                 latent_channels: int = 16, kl_weight: float = 1e-6, latent_scale: float = 0.2325, **kwargs):
        if z_channels is not None and int(z_channels) != int(latent_channels):
            raise GFTError(f"the KL-16 decoder takes latent_channels channels: z_channels {z_channels} != "
                           f"latent_channels {latent_channels}")
        super().__init__(image_size=image_size, in_channels=in_channels, channels=channels,
                         channel_mult=channel_mult, num_res_blocks=num_res_blocks, z_channels=latent_channels,
                         latent_channels=latent_channels, kl_weight=kl_weight, latent_scale=latent_scale, **kwargs)
        _check_groups(self.channels, self.channel_mult)


class LDMKLTokenizer(KLTokenizer):
    """MAR's KL-16 VAE (``kl16.ckpt``) as a KL tokenizer: images ↔ normalised continuous latents (B, 16, h, w).

    ``encode`` gives the posterior mean (or a draw, ``sample=True``, as MAR's training) × ``latent_scale``;
    ``decode`` divides by it, as MAR's ``vae.decode(tokens / 0.2325)``.
    """

    config_class = LDMKLConfig

    def __init__(self, config: LDMKLConfig):
        GFTPreTrainedModel.__init__(self, config)  # the networks below replace KLTokenizer's
        c, e = config, config.latent_channels
        self.encoder = LDMEncoder(c.in_channels, c.channels, c.channel_mult, c.num_res_blocks, 2 * e)
        self.quant_conv = nn.Conv2d(2 * e, 2 * e, 1)
        self.post_quant_conv = nn.Conv2d(e, e, 1)
        self.decoder = LDMDecoder(c.in_channels, c.channels, c.channel_mult, c.num_res_blocks, e, attn_last=False)
        self.post_init()
