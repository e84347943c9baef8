"""MAR/MaskGIT-style masked token model over VQ codes, with a β input for GFT.

The architecture follows MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization") with
a categorical head over a VQ codebook in place of MAR's diffusion head, as MaskGIT does:

* **encoder** (MAE-style): ``buffer_size`` buffer positions, each holding the condition vector (class embedding,
  plus the β embedding for GFT), followed by the image tokens' embeddings; learned positions over buffer + tokens,
  LayerNorm; then the *masked tokens are dropped* — the encoder attends over the buffer and the known tokens only.
* **decoder**: the encoder output projected to the decoder width and scattered back into a full sequence whose
  masked positions hold a learned ``[MASK]`` vector; learned positions; blocks; the buffer is dropped and an output
  head gives logits over the codebook for every image position.
* blocks are pre-norm ViT blocks (LayerNorm eps 1e-6, qkv with bias, GELU MLP of ``mlp_ratio``, attention and
  projection dropout), fully bidirectional.

The null class (row ``num_classes`` of the class table) plays the role of MAR's ``fake_latent``. GFT adds
``beta_embedder`` (sinusoid of β·1000 → MLP, zero-initialised last layer) whose output is added to the class
embedding, so a model built with ``beta_embed=False`` (the CFG baseline) and the same model with a fresh β embedder
give identical logits. Learned positions and the ``[MASK]`` vector are embedding tables called as modules (never
top-level parameters), so ZeRO-3 gathers them through its hooks.

Training (MAR's recipe): one random generation order per sample, and a mask ratio r from a normal of mean 1 and
std ``mask_ratio_std`` truncated to [``mask_ratio_min``, 1] (MAR: 0.25 and 0.7), ``ceil(r·N)`` tokens masked; the
loss counts masked positions only. As in MAR, one r is drawn per batch (see :func:`draw_training_mask`).

Differences from MAR, on purpose: the token input is an embedding table (discrete codes) instead of MAR's linear
projection of continuous latents; the head is a linear projection to the codebook (zero-initialised, as the
LlamaGen family's) instead of the diffusion MLP, so MAR's extra ``diffusion_pos_embed`` is not needed; Linear
layers are initialised N(0, 0.02²) (MAR: Xavier-uniform) so that every layer initialises itself under ZeRO-3.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig

from ...conditioning import BetaEmbedder, ClassConditional, ClassEmbedder, embed_condition
from ...errors import GFTError
from ...pretrained import GFTPreTrainedModel, preset_config
from ...nn import Embedding, Linear, OutputHead
from ...objectives import HeadInputs
from ...tokenizers.vq import check_codes

# CPU sizes, trained for minutes: sin-cos positions, no dropout, and a wider mask-ratio draw than MAR's (normal
# of mean 1, std 0.5, truncated to [0.3, 1]; MAR: std 0.25 on [0.7, 1]). Sampling fixes the last tokens with most of
# the image known — a context MAR's ratios never show in training; at MAR's scale the model generalises to it, a
# model of a million parameters trained for minutes does not (embedded benchmark, MAR-tiny, 1000 steps, random
# order, 500 samples: FID 43 with MAR's ratios, 37 with these, class accuracy 88% → 95%).
_CPU = dict(pos_init="sincos", attn_dropout=0.0, proj_dropout=0.0, mask_ratio_min=0.3, mask_ratio_std=0.5)

# MAR's sizes (LTH14/mar, models/mar.py: mar_base/large/huge; encoder and decoder alike) and small CPU sizes.
PRESETS: dict[str, dict] = {
    "MAR-B": dict(encoder_dim=768, encoder_depth=12, encoder_heads=12, decoder_dim=768, decoder_depth=12, decoder_heads=12),
    "MAR-L": dict(encoder_dim=1024, encoder_depth=16, encoder_heads=16, decoder_dim=1024, decoder_depth=16, decoder_heads=16),
    "MAR-H": dict(encoder_dim=1280, encoder_depth=20, encoder_heads=16, decoder_dim=1280, decoder_depth=20, decoder_heads=16),
    # CPU sizes: MAR's shape at a few hundred thousand to a few million parameters (settings: _CPU above).
    "MAR-nano": dict(encoder_dim=64, encoder_depth=1, encoder_heads=2, decoder_dim=64, decoder_depth=1, decoder_heads=2,
                     buffer_size=4, **_CPU),
    "MAR-tiny": dict(encoder_dim=128, encoder_depth=2, encoder_heads=4, decoder_dim=128, decoder_depth=2, decoder_heads=4,
                     buffer_size=8, **_CPU),
    "MAR-small": dict(encoder_dim=192, encoder_depth=3, encoder_heads=6, decoder_dim=192, decoder_depth=3,
                      decoder_heads=6, buffer_size=16, **_CPU),
}


class MaskedConfig(PretrainedConfig):
    model_type = "gft_masked"

    def __init__(
        self,
        encoder_dim: int = 1024,
        encoder_depth: int = 16,
        encoder_heads: int = 16,
        decoder_dim: int = 1024,
        decoder_depth: int = 16,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.1,
        buffer_size: int = 64,
        mask_ratio_min: float = 0.7,
        mask_ratio_std: float = 0.25,
        num_classes: int = 1000,
        vocab_size: int = 1024,
        grid_size: int = 16,
        beta_embed: bool = True,
        beta_freq_dim: int = 256,
        pos_init: str = "normal",
        preset: str | None = None,
        tokenizer: dict | None = None,
        dataset: dict | None = None,
        **kwargs,
    ):
        self.encoder_dim, self.encoder_depth, self.encoder_heads = int(encoder_dim), int(encoder_depth), int(encoder_heads)
        self.decoder_dim, self.decoder_depth, self.decoder_heads = int(decoder_dim), int(decoder_depth), int(decoder_heads)
        self.mlp_ratio, self.norm_eps, self.initializer_range = float(mlp_ratio), float(norm_eps), float(initializer_range)
        self.attn_dropout, self.proj_dropout = float(attn_dropout), float(proj_dropout)
        self.buffer_size = int(buffer_size)
        self.mask_ratio_min, self.mask_ratio_std = float(mask_ratio_min), float(mask_ratio_std)
        self.num_classes, self.vocab_size, self.grid_size = int(num_classes), int(vocab_size), int(grid_size)
        self.beta_embed, self.beta_freq_dim = bool(beta_embed), int(beta_freq_dim)
        self.pos_init = str(pos_init)
        self.preset = preset
        self.tokenizer = tokenizer  # what the model was trained with (type, codebook_size, grid_size, ...)
        self.dataset = dataset  # what it was trained on: {name, class_names} (None: unknown)
        super().__init__(**kwargs)
        for part in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{part}_dim"), getattr(self, f"{part}_heads")
            if dim <= 0 or heads <= 0 or dim % heads:
                raise GFTError(f"{part}_dim {dim} is not a positive multiple of {part}_heads {heads}")
        if self.buffer_size < 1:
            raise GFTError(f"buffer_size must be ≥ 1 (the condition enters through the buffer), got {self.buffer_size}")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise GFTError(f"mask_ratio_min must lie in (0, 1], got {self.mask_ratio_min}")
        if not self.mask_ratio_std > 0.0:
            raise GFTError(f"mask_ratio_std must be positive, got {self.mask_ratio_std}")
        if self.pos_init not in ("normal", "sincos"):
            raise GFTError(f"pos_init must be 'normal' or 'sincos', got {self.pos_init!r}")
        if self.pos_init == "sincos" and (self.encoder_dim % 4 or self.decoder_dim % 4):
            raise GFTError("pos_init 'sincos' needs encoder_dim and decoder_dim divisible by 4")
        for name in ("attn_dropout", "proj_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise GFTError(f"{name} must lie in [0, 1), got {getattr(self, name)}")

    @property
    def seq_len(self) -> int:
        """Number of image tokens."""
        return self.grid_size * self.grid_size


def masked_config(preset: str, **overrides) -> MaskedConfig:
    """A :class:`MaskedConfig` from a preset name plus overrides (``vocab_size``, ``grid_size`` …)."""
    return preset_config(MaskedConfig, PRESETS, preset, "masked-model preset", overrides)


# -----------------------------------------------------------------------------------------------------------------
# Training masks
# -----------------------------------------------------------------------------------------------------------------
def draw_mask_ratio(generator: torch.Generator | None, ratio_min: float = 0.7, std: float = 0.25, shape=None):
    """MAR's mask ratio: normal(mean 1, ``std``) truncated to [``ratio_min``, 1], drawn by inverse CDF.

    (MAR: ``scipy.stats.truncnorm((0.7 - 1) / 0.25, 0, loc=1, scale=0.25)``; here from a torch generator, so a
    training run is deterministic per seed.) One float, or a float64 tensor of ``shape`` draws.
    """
    a = torch.special.ndtr(torch.tensor((ratio_min - 1.0) / std, dtype=torch.float64))
    u = a + (0.5 - a) * torch.rand(shape or (), generator=generator, dtype=torch.float64)  # ndtr(0) = ½: top is 1
    r = (1.0 + std * torch.special.ndtri(u)).clamp(ratio_min, 1.0)
    return float(r) if shape is None else r


def draw_training_mask(batch: int, seq_len: int, generator: torch.Generator | None, ratio_min: float = 0.7,
                       std: float = 0.25) -> torch.Tensor:
    """MAR's training mask (B, N) bool, True = masked (to be predicted).

    Each sample gets its own random generation order (a uniform permutation); the first ``ceil(r·N)`` positions of
    the order are masked, with one ratio r (:func:`draw_mask_ratio`) for the whole batch.

    Per batch, as MAR does (``mask_ratio_generator.rvs(1)``), rather than per sample: with equal counts per row the
    encoder drops the masked tokens with a plain gather — no padding, no attention mask — which is where the MAE
    encoder saves its compute, and the sampler's masks have equal counts per row anyway. Over training steps the
    ratios seen are the same truncated normal either way; only the within-batch mix differs.
    """
    n = min(seq_len, max(1, math.ceil(seq_len * draw_mask_ratio(generator, ratio_min, std))))
    order = torch.rand(batch, seq_len, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    return mask.scatter_(1, order[:, :n], True)


def check_mask(mask, batch: int, seq_len: int) -> int:
    """Validate a (B, N) bool mask with the same number of masked positions in every row; returns that number."""
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        raise GFTError(f"mask must be a bool tensor (True = masked), got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != (batch, seq_len):
        raise GFTError(f"mask must have shape ({batch}, {seq_len}), got {tuple(mask.shape)}")
    counts = mask.sum(1)
    if batch and bool((counts != counts[0]).any()):
        raise GFTError("every row of the mask must mask the same number of positions (the encoder drops masked "
                       f"tokens, as MAR's does); got counts {sorted(set(counts.tolist()))}")
    return int(counts[0]) if batch else 0


# -----------------------------------------------------------------------------------------------------------------
# The MAE-style encoder/decoder pass (shared with the continuous variant, models/mar_continuous.py)
# -----------------------------------------------------------------------------------------------------------------
def run_blocks(model, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        if model.gradient_checkpointing and model.training:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def encode_decode(model, token_embeds: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                  n_masked: int) -> torch.Tensor:
    """Embedded tokens (B, N, enc) + condition vector (B, enc) + mask (B, N, n_masked per row) → decoder output
    (B, N, dec): the buffer holds the condition, the encoder sees the buffer and the known tokens only, the decoder
    a ``[MASK]`` vector at every masked position. ``model`` holds the encoder/decoder modules."""
    bsz, n, _ = token_embeds.shape
    device = token_embeds.device
    buf = model.config.buffer_size
    positions = torch.arange(buf + n, device=device)

    # encoder: buffer (the condition) + known tokens only
    x = torch.cat([cond[:, None, :].expand(-1, buf, -1), token_embeds], dim=1)
    x = model.z_proj_ln(x + model.encoder_pos_embed(positions))
    keep = (~mask).nonzero()[:, 1].view(bsz, n - n_masked)  # known positions, ascending, per row
    known = x[:, buf:].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
    x = model.encoder_norm(run_blocks(model, model.encoder_blocks, torch.cat([x[:, :buf], known], dim=1)))

    # decoder: [MASK] everywhere, the encoder's outputs scattered back at the known positions
    x = model.decoder_embed(x)
    d = x.shape[-1]
    pad = model.mask_token(torch.zeros(1, dtype=torch.long, device=device)).to(x.dtype).expand(bsz, n, d)
    tokens = pad.scatter(1, keep[..., None].expand(-1, -1, d), x[:, buf:])
    x = torch.cat([x[:, :buf], tokens], dim=1) + model.decoder_pos_embed(positions)
    return model.decoder_norm(run_blocks(model, model.decoder_blocks, x))[:, buf:]


def gather_positions(h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``h`` (B, N, D) at ``positions`` (B, K) → (B, K, D)."""
    if positions.ndim != 2 or positions.shape[0] != h.shape[0]:
        raise GFTError(f"positions must have shape ({h.shape[0]}, K), got {tuple(positions.shape)}")
    return h.gather(1, positions.to(h.device)[..., None].expand(-1, -1, h.shape[-1]))


# -----------------------------------------------------------------------------------------------------------------
# Blocks
# -----------------------------------------------------------------------------------------------------------------
def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2D sin-cos table (grid², dim): first half of the channels from the row, second from the column."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * omega  # (grid, dim/4)
    axis = torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)  # (grid, dim/2)
    rows = axis[:, None, :].expand(grid, grid, -1)
    cols = axis[None, :, :].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).float()


class PositionEmbedding(Embedding):
    """Learned positions, ``buffer`` rows then ``grid²`` rows in raster order.

    Initialised N(0, std²) as MAR's (``"normal"``), or — ``"sincos"`` — with the grid rows set to MAE's 2D sin-cos
    table scaled to the same std: still learned, but starting with nearby positions alike, which small models
    trained for minutes need to use their neighbours early.
    """

    def __init__(self, buffer: int, grid: int, dim: int, std: float, init: str):
        object.__setattr__(self, "buffer", buffer)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "init_mode", init)
        super().__init__(buffer + grid * grid, dim, std=std)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.init_mode == "sincos":
            with torch.no_grad():
                table = sincos_2d(self.grid, self.embedding_dim) * (self.init_std * math.sqrt(2.0))  # RMS = std
                self.weight[self.buffer:] = table.to(self.weight.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float, proj_dropout: float, std: float):
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = Linear(dim, 3 * dim, bias=True, std=std)
        self.proj = Linear(dim, dim, bias=True, std=std)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, dim = x.shape
        q, k, v = self.qkv(x).view(bsz, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bsz, t, dim)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, std: float):
        super().__init__()
        self.fc1 = Linear(dim, hidden, bias=True, std=std)
        self.fc2 = Linear(hidden, dim, bias=True, std=std)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm ViT block (timm ``Block`` layout, as MAR uses), bidirectional attention."""

    def __init__(self, dim: int, heads: int, config: MaskedConfig):
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.attn = Attention(dim, heads, c.attn_dropout, c.proj_dropout, c.initializer_range)
        self.norm2 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.mlp = Mlp(dim, int(dim * c.mlp_ratio), c.proj_dropout, c.initializer_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# -----------------------------------------------------------------------------------------------------------------
# The model
# -----------------------------------------------------------------------------------------------------------------
class MaskedTransformer(ClassConditional, GFTPreTrainedModel):
    """The transformer of the masked family and of MAR's continuous variant: the condition (class embedding, plus
    the β embedding for GFT) that fills the buffer, learned positions, the encoder and decoder blocks and ``[MASK]``
    (:func:`encode_decode` runs them). A subclass adds its ends: :meth:`build_token_input` (built right after the
    condition) and :meth:`build_output` (built last) — the construction order fixes the initial weights."""

    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    def __init__(self, config: MaskedConfig):
        super().__init__(config)
        c = config
        std, enc, dec = c.initializer_range, c.encoder_dim, c.decoder_dim
        self.class_emb = ClassEmbedder(c.num_classes, enc, std=std)
        self.beta_embedder = BetaEmbedder(enc, c.beta_freq_dim, std=std) if c.beta_embed else None
        self.build_token_input(c)
        self.encoder_pos_embed = PositionEmbedding(c.buffer_size, c.grid_size, enc, std, c.pos_init)
        self.z_proj_ln = nn.LayerNorm(enc, eps=c.norm_eps)
        self.encoder_blocks = nn.ModuleList([Block(enc, c.encoder_heads, c) for _ in range(c.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(enc, eps=c.norm_eps)
        self.decoder_embed = Linear(enc, dec, bias=True, std=std)
        self.mask_token = Embedding(1, dec, std=std)
        self.decoder_pos_embed = PositionEmbedding(c.buffer_size, c.grid_size, dec, std, c.pos_init)
        self.decoder_blocks = nn.ModuleList([Block(dec, c.decoder_heads, c) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dec, eps=c.norm_eps)
        self.build_output(c)
        self.gradient_checkpointing = False
        self.post_init()

    def build_token_input(self, config: MaskedConfig) -> None:
        """Set the module that maps tokens to (B, N, encoder_dim) embeddings."""
        raise NotImplementedError

    def build_output(self, config: MaskedConfig) -> None:
        """Set the modules that read the decoder states (B, N, decoder_dim)."""
        raise NotImplementedError

    # -- conditioning ----------------------------------------------------------------------------------------------
    def condition(self, labels: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """Class embedding (+ β embedding): (B, encoder_dim)."""
        return embed_condition(self.class_emb, self.num_classes, self.beta_embedder, labels, beta)


class MaskedTokenModel(MaskedTransformer):
    config_class = MaskedConfig

    def build_token_input(self, config: MaskedConfig) -> None:
        self.tok_embeddings = Embedding(config.vocab_size, config.encoder_dim, std=config.initializer_range)

    def build_output(self, config: MaskedConfig) -> None:
        self.output = OutputHead(config.decoder_dim, config.vocab_size, zero_init=True)

    # -- backbone --------------------------------------------------------------------------------------------------
    def hidden_states(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None,
                      mask: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, N, decoder_dim) for every image position.

        ``mask`` (B, N) bool, True = masked: those codes are never read (they may hold anything, even out of range);
        every row must mask the same number of positions.
        """
        c = self.config
        if not torch.is_tensor(codes) or codes.ndim != 2:
            raise GFTError(f"codes must be a (B, N) tensor, got {tuple(getattr(codes, 'shape', ()))}")
        bsz, n = codes.shape
        if n != c.seq_len:
            raise GFTError(f"expected {c.seq_len} image tokens ({c.grid_size}x{c.grid_size} grid), got {n}")
        n_masked = check_mask(mask, bsz, n)
        device = self.tok_embeddings.weight.device
        mask = mask.to(device)
        codes = check_codes(codes.to(device).masked_fill(mask, 0), c.vocab_size, ndim=2)  # targets never enter
        return encode_decode(self, self.tok_embeddings(codes), self.condition(cond, beta), mask, n_masked)

    def forward(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None, *,
                mask: torch.Tensor) -> torch.Tensor:
        """codes (B, N) + labels (B,) [+ β (B,)] + mask (B, N) → logits (B, N, V), float32, at every position.

        Only the logits at masked positions are predictions (training counts those only).
        """
        return self.output(self.hidden_states(codes, cond, beta, mask)).float()

    def head_inputs(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None, *,
                    mask: torch.Tensor) -> HeadInputs:
        """As :meth:`forward` but returns decoder states + output projection (for the fused loss)."""
        return HeadInputs(self.hidden_states(codes, cond, beta, mask), self.output)

    # -- sampling --------------------------------------------------------------------------------------------------
    def hidden_at(self, codes: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor | None, mask: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, K, D) at ``positions`` (B, K) only, for the output head (``self.output``)."""
        return gather_positions(self.hidden_states(codes, labels, beta, mask), positions)

    def logits_at(self, codes: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor | None, mask: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, V), float32, at ``positions`` (B, K) only — the head never runs on other positions."""
        return self.output(self.hidden_at(codes, labels, beta, mask, positions)).float()
