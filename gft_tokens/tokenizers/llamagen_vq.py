"""LlamaGen's VQ image tokenizer (VQ-16 / VQ-8), with the official parameter names so published weights load as is.

Architecture as ``tokenizer/tokenizer_image/vq_model.py`` of FoundationVision/LlamaGen: a taming/LDM-style conv
encoder (``conv_blocks`` of residual blocks, single-head self-attention at the lowest resolution, stride-2
downsampling after right/bottom zero padding), a 1x1 ``quant_conv`` to an 8-dim code space, an l2-normalised
codebook (nearest neighbour of the normalised feature among the normalised codebook rows, i.e. cosine similarity),
a 1x1 ``post_quant_conv`` and the mirrored decoder (nearest-neighbour upsampling). GroupNorm(32, eps 1e-6), swish.

Codes are in row-major order over the (h, w) grid, as LlamaGen's GPT expects. Import the published weights with
``scripts/import_checkpoint.py --format llamagen-vq`` (the ``quantize.codebook_used`` usage buffer of the original is a
training statistic and is not kept). The same ``encode`` / ``decode`` / ``describe`` API as
:class:`~gft_tokens.tokenizers.vq.VQTokenizer`, so the training loop and the samplers take either.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig

from ..errors import GFTError
from ..pretrained import GFTPreTrainedModel
from .vq import GridTokenizer, check_codes, check_images

# ch_mult per published tokenizer (FoundationVision/LlamaGen, VQ_models)
VQ_PRESETS = {"VQ-16": [1, 1, 2, 2, 4], "VQ-8": [1, 2, 2, 4]}


class LlamaGenVQConfig(PretrainedConfig):
    model_type = "gft_llamagen_vq"

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        channels: int = 128,
        channel_mult: tuple[int, ...] | list[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 16384,
        codebook_dim: int = 8,
        codebook_l2_norm: bool = True,
        dropout: float = 0.0,
        **kwargs,
    ):
        self.image_size, self.in_channels, self.channels = int(image_size), int(in_channels), int(channels)
        self.channel_mult = [int(m) for m in channel_mult]
        self.num_res_blocks, self.z_channels = int(num_res_blocks), int(z_channels)
        self.codebook_size, self.codebook_dim = int(codebook_size), int(codebook_dim)
        self.codebook_l2_norm, self.dropout = bool(codebook_l2_norm), float(dropout)
        super().__init__(**kwargs)
        if not self.channel_mult:
            raise GFTError("channel_mult needs at least one level")
        if self.image_size % self.downsample:
            raise GFTError(f"image_size {self.image_size} is not divisible by the downsample factor {self.downsample}")
        for c in {self.channels * m for m in self.channel_mult}:
            if c % 32:
                raise GFTError(f"every level's channel count must be divisible by 32 (GroupNorm(32)); got {c}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h·w positions, 1x1-conv projections, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (f(n).reshape(b, c, h * w).transpose(1, 2) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # scale c^-1/2
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``res`` blocks, each followed by ``attn`` when the level has attention."""

    def __init__(self, c_in: int, c_out: int, blocks: int, attention: bool, dropout: float):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(blocks if attention else 0))

    def forward(self, x):
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Encoder(nn.Module):
    def __init__(self, c: LlamaGenVQConfig):
        super().__init__()
        ch, mult, last = c.channels, c.channel_mult, len(c.channel_mult) - 1
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        c_in = ch
        for i, m in enumerate(mult):
            level = _Level(c_in, ch * m, c.num_res_blocks, attention=i == last, dropout=c.dropout)
            if i != last:
                level.downsample = Downsample(ch * m)
            self.conv_blocks.append(level)
            c_in = ch * m
        self.mid = nn.ModuleList([ResnetBlock(c_in, c_in, c.dropout), AttnBlock(c_in), ResnetBlock(c_in, c_in, c.dropout)])
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, c.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Stored top level first: ``conv_blocks.0`` works at the lowest resolution (and has the attention)."""

    def __init__(self, c: LlamaGenVQConfig):
        super().__init__()
        ch, mult, last = c.channels, c.channel_mult, len(c.channel_mult) - 1
        c_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, c_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(c_in, c_in, c.dropout), AttnBlock(c_in), ResnetBlock(c_in, c_in, c.dropout)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):
            level = _Level(c_in, ch * mult[i], c.num_res_blocks + 1, attention=i == last, dropout=c.dropout)
            if i != 0:
                level.upsample = Upsample(ch * mult[i])
            self.conv_blocks.append(level)
            c_in = ch * mult[i]
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, c.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Quantizer(nn.Module):
    """The codebook (``embedding``); lookup by nearest neighbour, l2-normalised on both sides when configured."""

    def __init__(self, c: LlamaGenVQConfig):
        super().__init__()
        self.l2_norm = c.codebook_l2_norm
        self.embedding = nn.Embedding(c.codebook_size, c.codebook_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / c.codebook_size, 1.0 / c.codebook_size)

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Features (B, C, h, w) → nearest code ids (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        e = self.codebook().float()
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None] - 2 * flat @ e.t()
        return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) → codebook vectors (B, C, h, w)."""
        return self.codebook()[codes].permute(0, 3, 1, 2).contiguous()


class LlamaGenVQ(GridTokenizer, GFTPreTrainedModel):
    """Images in [-1, 1] ↔ a grid of integer codes, LlamaGen's VQ tokenizer.

    >>> tok = load_tokenizer("tokenizers/llamagen-vq16")   # imported with scripts/import_checkpoint.py
    >>> codes = tok.encode(images)                          # (B, H/16, W/16) int64
    >>> recon = tok.decode(codes)                           # (B, 3, H, W) in [-1, 1]
    """

    config_class = LlamaGenVQConfig
    main_input_name = "images"

    def __init__(self, config: LlamaGenVQConfig):
        super().__init__(config)
        c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantize = Quantizer(c)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.z_channels, 1)
        self.post_init()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] → codes (B, H/f, W/f) int64."""
        images = check_images(images, self.config.in_channels, self.downsample)
        return self.quantize.indices(self.quant_conv(self.encoder(images.to(self.device))))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) → images (B, 3, h·f, w·f) in [-1, 1]."""
        codes = check_codes(codes, self.codebook_size)
        return self.decode_latents(self.quantize.lookup(codes.to(self.device))).clamp(-1.0, 1.0)
