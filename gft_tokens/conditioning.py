"""Condition embedders: class labels (with a null class) and the GFT pseudo-temperature β.

Label dropout is *not* done here: the objective decides which rows are dropped and passes the null label, so no
embedder keeps per-batch state.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import GFTError
from .nn import Embedding, Linear, sinusoidal_embedding

BETA_SCALE = 1000.0


def check_labels(labels, num_classes: int, allow_null: bool = True) -> torch.Tensor:
    """Validate class ids: integers in [0, num_classes), or == num_classes (the null class) if ``allow_null``."""
    if not torch.is_tensor(labels):
        labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise GFTError(f"class labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise GFTError(f"class labels must have shape (B,), got {tuple(labels.shape)}")
    if labels.numel():
        hi = num_classes if allow_null else num_classes - 1
        lo_v, hi_v = int(labels.min()), int(labels.max())
        if lo_v < 0 or hi_v > hi:
            bad = lo_v if lo_v < 0 else hi_v
            raise GFTError(f"class id {bad} is outside [0, {num_classes}) (the model has {num_classes} classes)")
    return labels.long()


def check_beta(beta, batch: int, device=None) -> torch.Tensor:
    """β as a float32 tensor (B,) in [0, 1]; a Python number is broadcast. Rejects NaN and values outside [0, 1]."""
    if beta is None:
        raise GFTError("beta is required")
    if not torch.is_tensor(beta):
        try:
            beta = torch.as_tensor(beta, dtype=torch.float32)
        except (TypeError, ValueError):
            raise GFTError(f"beta must be a number or a tensor, got {beta!r}") from None
    beta = beta.float()
    if beta.ndim == 0:
        beta = beta.expand(batch)
    if beta.shape != (batch,):
        raise GFTError(f"beta must be a scalar or have shape ({batch},), got {tuple(beta.shape)}")
    if torch.isnan(beta).any():
        raise GFTError("beta is NaN; it must lie in [0, 1]")
    if beta.numel() and (beta.min() < 0 or beta.max() > 1):
        bad = beta.min().item() if beta.min() < 0 else beta.max().item()
        raise GFTError(f"beta must lie in [0, 1], got {bad:g}")
    return beta.to(device) if device is not None else beta


class ClassEmbedder(nn.Module):
    """``num_classes + 1`` rows; row ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, dim: int, std: float = 0.02):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = Embedding(num_classes + 1, dim, std=std)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class BetaEmbedder(nn.Module):
    """β → sinusoid(β·1000, 256) → Linear → SiLU → Linear(zero-init).

    The last layer starts at zero, so adding this embedding to a condition changes nothing until training moves
    it: a GFT fine-tune of a CFG checkpoint starts exactly at that checkpoint. (Layout as in DiT's timestep
    embedder: ``mlp.0`` and ``mlp.2``.)
    """

    def __init__(self, dim: int, freq_dim: int = 256, std: float = 0.02):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, dim, bias=True, std=std), nn.SiLU(),
                                 Linear(dim, dim, bias=True, zero_init=True))

    def forward(self, beta: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(beta * BETA_SCALE, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ClassConditional:
    """Mixin of the class-conditional generators: ``num_classes`` from the config; the null class is the row after
    the last class."""

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_class(self) -> int:
        return self.config.num_classes


def embed_condition(class_table: nn.Module, num_classes: int, beta_embedder: BetaEmbedder | None, labels, beta,
                    guidance: str = "cfg_scale") -> torch.Tensor:
    """The condition vector of every family: ``class_table`` (``num_classes`` + 1 rows, the last the null class)
    at ``labels``, plus the β embedding when ``beta`` is given: (B, D). A model without a β input (trained with
    the CFG objective) refuses β with a message naming its guidance argument ``guidance``."""
    labels = check_labels(labels, num_classes, allow_null=True)
    h = class_table(labels.to(next(class_table.parameters()).device))
    if beta is not None:
        if beta_embedder is None:
            raise GFTError(f"this model has no β input (trained with the CFG objective); sample it with {guidance}, "
                           "or fine-tune it with --objective gft --init-from")
        h = h + beta_embedder(check_beta(beta, labels.shape[0], device=h.device)).to(h.dtype)
    return h


def beta_to_cfg_scale(beta: float) -> float:
    """LlamaGen/MAR convention ``u + w·(c − u)``: w = 1/β."""
    if not 0.0 < beta <= 1.0:
        raise GFTError(f"beta must lie in (0, 1] to have a CFG scale, got {beta}")
    return 1.0 / beta


def cfg_scale_to_beta(w: float) -> float:
    """β = 1/w for a LlamaGen-convention CFG scale w ≥ 1."""
    if not (w >= 1.0 and math.isfinite(w)):
        raise GFTError(f"a CFG scale must be a finite number ≥ 1 to map to beta in (0, 1], got {w}")
    return 1.0 / w


def beta_to_var_cfg(beta: float) -> float:
    """VAR convention ``(1 + t)·c − t·u``: t = 1/β − 1."""
    return beta_to_cfg_scale(beta) - 1.0


def var_cfg_to_beta(t: float) -> float:
    """β = 1/(1 + t) for a VAR-convention guidance strength t ≥ 0."""
    if not (t >= 0.0 and math.isfinite(t)):
        raise GFTError(f"a VAR guidance strength must be a finite number ≥ 0, got {t}")
    return 1.0 / (1.0 + t)


class Caption:
    """A batch of caption conditions: text-encoder ``features`` (B, L, C), ``mask`` (B, L) bool (True at real
    tokens) and ``drop`` (B,) bool, rows that stand for the null caption (the model swaps in its learned null
    embedding). The objective drops rows with :meth:`with_dropped` (no state is kept on any embedder)."""

    def __init__(self, features: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None):
        if features.ndim != 3 or mask.shape != features.shape[:2]:
            raise GFTError(f"caption features must be (B, L, C) with a (B, L) mask, got {tuple(features.shape)} "
                           f"and {tuple(mask.shape)}")
        self.features, self.mask = features, mask.bool()
        self.drop = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device) if drop is None else drop

    @classmethod
    def null(cls, batch: int, length: int, width: int, device=None) -> "Caption":
        """``batch`` rows of the null caption."""
        return cls(torch.zeros(batch, length, width, device=device),
                   torch.ones(batch, length, dtype=torch.bool, device=device),
                   torch.ones(batch, dtype=torch.bool, device=device))

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, rows) -> "Caption":
        """The captions of ``rows`` (a slice, an index tensor or a boolean mask), as a batch."""
        return Caption(self.features[rows], self.mask[rows], self.drop[rows])

    def to(self, device) -> "Caption":
        return Caption(self.features.to(device), self.mask.to(device), self.drop.to(device))

    def with_dropped(self, drop: torch.Tensor) -> "Caption":
        return Caption(self.features, self.mask, self.drop | drop.to(self.drop.device))

    def cat(self, other: "Caption") -> "Caption":
        return Caption(torch.cat([self.features, other.features]), torch.cat([self.mask, other.mask]),
                       torch.cat([self.drop, other.drop]))


class CaptionEmbedder(nn.Module):
    """LlamaGen's t2i caption embedder: text features (B, L, C) → MLP (``cap_proj.fc1``, GELU-tanh, ``fc2``) →
    (B, L, D); a dropped row is replaced by the learned null caption ``uncond_embedding`` (L, C) before the MLP.

    ``null_mask``: the padding mask of a dropped row. ``"full"`` (default): all True, the null caption is one fixed
    sequence whatever the dropped caption's length. ``"caption"`` (LlamaGen's released t2i models): the row keeps its
    caption's mask, as LlamaGen's training (the dataset's mask stays when the caption is dropped) and its CFG
    sampling (the null half takes the captions' ``emb_masks``) do. ``bias``: biases in the MLP (LlamaGen's have
    none; this toolkit's default has them)."""

    NULL_MASKS = ("full", "caption")

    def __init__(self, caption_dim: int, dim: int, token_num: int, std: float = 0.02, bias: bool = True,
                 null_mask: str = "full"):
        super().__init__()
        if null_mask not in self.NULL_MASKS:
            raise GFTError(f"null caption mask must be one of {', '.join(map(repr, self.NULL_MASKS))}, got "
                           f"{null_mask!r}")
        self.caption_dim, self.token_num, self.null_mask = caption_dim, token_num, null_mask
        self.cap_proj = nn.Sequential()
        self.cap_proj.add_module("fc1", Linear(caption_dim, dim, bias=bias, std=std))
        self.cap_proj.add_module("act", nn.GELU(approximate="tanh"))
        self.cap_proj.add_module("fc2", Linear(dim, dim, bias=bias, std=std))
        self.uncond_embedding = nn.Parameter(torch.randn(token_num, caption_dim) / caption_dim ** 0.5)

    def forward(self, caption: Caption) -> tuple[torch.Tensor, torch.Tensor]:
        b, length, width = caption.features.shape
        if width != self.caption_dim:
            raise GFTError(f"text encoder width {width} does not match the model's caption width {self.caption_dim}")
        if length != self.token_num:
            raise GFTError(f"captions of {length} positions, the model takes {self.token_num}")
        w = self.uncond_embedding
        drop = caption.drop.to(w.device)
        feats = torch.where(drop[:, None, None], w.expand(b, -1, -1), caption.features.to(w.device, w.dtype))
        mask = caption.mask.to(w.device)
        if self.null_mask == "full":
            mask = mask | drop[:, None]
        return self.cap_proj(feats), mask


def add_fresh_beta_embedder(state: dict[str, torch.Tensor], notes: list[str], dim: int, freq_dim: int,
                            std: float) -> None:
    """Add a new β embedder (``beta_embedder.*``, width ``dim``) to a converted ``state``, built from seed 0 without
    touching the global RNG, and say so in ``notes``: its output layer is zero-initialised, so the imported model
    equals the checkpoint at every β."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        emb = BetaEmbedder(dim, freq_dim, std=std)
    state.update({"beta_embedder." + k: v for k, v in emb.state_dict().items()})
    notes.append("β embedder added with a zero-initialised output layer (the model equals the checkpoint at every β)")
