"""MAR over continuous tokens (KL-autoencoder latents) with a per-token diffusion head, and a β input for GFT.

The transformer is the masked family's (:mod:`gft_tokens.families.masked.model`: the same blocks, learned/sin-cos
positions, buffer holding the condition, MAE-style encoder over known tokens only, decoder with a ``[MASK]``
vector at masked positions, MAR's training masks) with MAR's continuous-token ends:

* token input: ``z_proj``, a Linear projection of each latent vector (C channels) — not an embedding table;
* output: the decoder states plus ``diffusion_pos_embed`` give one condition vector z per token for the diffusion
  head (:mod:`gft_tokens.families.mar.diffloss`), which models p(x | z) with a small denoising MLP.

Conditioning is the masked family's: the class embedding (null class = row ``num_classes``, MAR's
``fake_latent``) plus, for GFT, a zero-initialised β embedding — so a CFG model and the same weights with a fresh β
embedder give identical z, hence identical ε predictions.

Latents enter as (B, N, C) rows in raster order of the tokenizer's (B, C, h, w) grid (MAR's ``patchify`` with
patch size 1). Linear layers of the transformer are initialised N(0, 0.02²) as in the masked family; the diffusion
head keeps MAR's own init.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from ...errors import GFTError
from ...pretrained import preset_config
from ...nn import Embedding, Linear
from ...objectives import DiffusionInputs
from .diffloss import DiffusionHead
from ..masked.model import PRESETS as MASKED_PRESETS
from ..masked.model import MaskedConfig, MaskedTransformer, check_mask, encode_decode, gather_positions

# The masked family's transformer sizes with MAR's DiffLoss (depth d, width w): README evaluation settings for
# MAR-B/L/H (and MAR's diffusion_batch_mul 4); small heads for the CPU sizes, which also draw 2 (t, ε) per token
# instead of 4 to halve the head's cost per step.
_HEADS = {"MAR-B": (6, 1024, 4), "MAR-L": (8, 1280, 4), "MAR-H": (12, 1536, 4),
          "MAR-nano": (2, 64, 2), "MAR-tiny": (3, 128, 2), "MAR-small": (3, 256, 2)}
PRESETS: dict[str, dict] = {name: dict(MASKED_PRESETS[name], diffloss_d=d, diffloss_w=w, diffusion_batch_mul=mul)
                            for name, (d, w, mul) in _HEADS.items()}


class MARConfig(MaskedConfig):
    """The masked family's transformer fields (validated by its rules) plus the continuous-token ones; there is no
    vocabulary (``vocab_size`` is None)."""

    model_type = "gft_mar"

    def __init__(
        self,
        token_dim: int = 16,
        diffloss_d: int = 3,
        diffloss_w: int = 1024,
        num_sampling_steps: int = 100,
        diffusion_batch_mul: int = 4,
        **kwargs,
    ):
        kwargs.pop("vocab_size", None)  # continuous tokens: no codebook
        super().__init__(**kwargs)
        self.vocab_size = None
        self.token_dim = int(token_dim)
        self.diffloss_d, self.diffloss_w = int(diffloss_d), int(diffloss_w)
        self.num_sampling_steps, self.diffusion_batch_mul = int(num_sampling_steps), int(diffusion_batch_mul)
        if self.token_dim < 1:
            raise GFTError(f"token_dim (latent channels) must be ≥ 1, got {self.token_dim}")
        if self.diffloss_d < 1 or self.diffloss_w < 1:
            raise GFTError(f"diffloss_d and diffloss_w must be ≥ 1, got {self.diffloss_d}, {self.diffloss_w}")
        if not 1 <= self.num_sampling_steps <= 1000:
            raise GFTError(f"num_sampling_steps must lie in [1, 1000], got {self.num_sampling_steps}")
        if self.diffusion_batch_mul < 1:
            raise GFTError(f"diffusion_batch_mul must be ≥ 1, got {self.diffusion_batch_mul}")

    @property
    def seq_len(self) -> int:
        return self.grid_size * self.grid_size


def mar_config(preset: str, **overrides) -> MARConfig:
    """A :class:`MARConfig` from a preset name plus overrides (``token_dim``, ``grid_size`` …)."""
    return preset_config(MARConfig, PRESETS, preset, "MAR preset", overrides)


def check_tokens(latents, seq_len: int, token_dim: int, name: str = "latents") -> torch.Tensor:
    """Validate continuous tokens (B, N, C) for a model of ``seq_len`` tokens of ``token_dim`` channels."""
    if not torch.is_tensor(latents) or not latents.is_floating_point():
        raise GFTError(f"{name} must be a float tensor (B, {seq_len}, {token_dim}), got "
                       f"{getattr(latents, 'dtype', type(latents).__name__)}")
    if latents.ndim != 3 or latents.shape[1:] != (seq_len, token_dim):
        raise GFTError(f"{name} must have shape (B, {seq_len}, {token_dim}) ({seq_len} tokens of {token_dim} latent "
                       f"channels), got {tuple(latents.shape)}")
    return latents


def grid_to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latent grid → (B, h·w, C) tokens in raster order."""
    return latents.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, h·w, C) tokens → (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid, grid)


class MARModel(MaskedTransformer):
    """The masked family's transformer (:class:`~gft_tokens.families.masked.model.MaskedTransformer`) with
    continuous-token ends: ``z_proj`` in, ``diffusion_pos_embed`` and the diffusion head out."""

    config_class = MARConfig

    def build_token_input(self, config: MARConfig) -> None:
        self.z_proj = Linear(config.token_dim, config.encoder_dim, bias=True, std=config.initializer_range)

    def build_output(self, config: MARConfig) -> None:
        c = config
        self.diffusion_pos_embed = Embedding(c.seq_len, c.decoder_dim, std=c.initializer_range)
        self.diffloss = DiffusionHead(c.token_dim, c.decoder_dim, c.diffloss_d, c.diffloss_w, c.num_sampling_steps,
                                      c.diffusion_batch_mul)

    def forward(self, latents: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None, *,
                mask: torch.Tensor) -> torch.Tensor:
        """latents (B, N, C) + labels (B,) [+ β (B,)] + mask (B, N) → z (B, N, decoder_dim), the diffusion head's
        condition for every token (only those at masked positions are predictions).

        ``mask`` True = masked: those latents are never read; every row must mask the same number of positions.
        """
        c = self.config
        latents = check_tokens(latents, c.seq_len, c.token_dim)
        bsz, n = latents.shape[0], c.seq_len
        n_masked = check_mask(mask, bsz, n)
        device = self.z_proj.weight.device
        mask = mask.to(device)
        x = latents.to(device).masked_fill(mask[..., None], 0.0)  # targets never enter
        cond = self.condition(cond, beta)
        z = encode_decode(self, self.z_proj(x.to(cond.dtype)), cond, mask, n_masked)
        return z + self.diffusion_pos_embed(torch.arange(n, device=device))

    def diffusion_inputs(self, latents: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None, *,
                         mask: torch.Tensor) -> DiffusionInputs:
        """What the ε objectives take (:mod:`gft_tokens.families.mar.diffloss`): z (B, N, D) and the head."""
        return DiffusionInputs(self(latents, cond, beta, mask=mask), self.diffloss)

    def z_at(self, latents: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor | None, mask: torch.Tensor,
             positions: torch.Tensor) -> torch.Tensor:
        """z (B, K, D) at ``positions`` (B, K) only (for sampling)."""
        return gather_positions(self(latents, labels, beta, mask=mask), positions)
