"""Shared pieces of the samplers: logit filtering, token draws, the guidance arguments and the cost counter.

Every family's sampler takes the same guidance arguments: ``beta`` (GFT: the sampling model alone, one network
pass per step) or ``cfg_scale`` w in LlamaGen's convention ``u + w·(c − u)`` (two passes, batched as 2B rows),
with ``cfg_schedule`` (``"constant"``, or a family's ``"linear"`` ramp) where the family supports one. ``cfg_scale=1``
is the conditional model and runs one pass. A family converts w to its own convention inside (VAR: t = w − 1).

Every sampler counts its own cost in a :class:`SamplingStats` passed as ``stats=``: one *network evaluation* is one
row of the batch through the transformer once, so per image a GFT sampler costs one per step and a CFG sampler
two; MAR's diffusion-head evaluations are counted apart.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..conditioning import check_beta, check_labels
from ..errors import GFTError


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of (B, V) logits; removed entries become -inf. Always keeps the argmax."""
    if top_k and top_k > 0:
        k = min(int(top_k), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token that crosses the threshold
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def _draw_below(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first entry of each row of ``cdf`` (non-decreasing, float64) that exceeds ``u`` (B, 1)."""
    u = torch.minimum(u, torch.nextafter(cdf[:, -1:], torch.zeros_like(u)))  # stay below the row total
    return torch.searchsorted(cdf, u, right=True)


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None, block: int = 128) -> torch.Tensor:
    """One draw per row of (B, V) non-negative weights by inverting the CDF, with one uniform number per row.

    ``torch.multinomial`` draws V exponential variates per row and a full cumulative sum is a sequential pass over
    V; at V = 16384 either dominates a sampling step on a CPU. Here the CDF is inverted in two levels: over the
    sums of blocks of ``block`` entries (a vectorised reduction), then inside the chosen block. Entries of weight
    0 (filtered by top-k/top-p) are never drawn.
    """
    return categorical_with_total(probs, generator, block)[0]


def uniforms(rows: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """The uniform numbers (rows, 1), float64, that one :func:`categorical` draw of ``rows`` rows consumes."""
    return torch.rand(rows, 1, generator=generator, device=device, dtype=torch.float64)


def categorical_with_total(probs: torch.Tensor, generator: torch.Generator | None = None,
                           block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`categorical`, also returning each row's total weight (float64, (B,)) from the same reduction."""
    return categorical_from_uniform(probs, uniforms(probs.shape[0], generator, probs.device), block)


def categorical_from_uniform(probs: torch.Tensor, u: torch.Tensor,
                             block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`categorical_with_total` given its uniform numbers ``u`` (B, 1) in [0, 1) (:func:`uniforms`).

    No random generator and no data-dependent Python branch: ``torch.compile`` captures it whole (the compiled
    LlamaGen decode step draws ``u`` outside its graph and passes it in).
    """
    bsz, vocab = probs.shape
    pad = (-vocab) % block
    w = torch.nn.functional.pad(probs, (0, pad)) if pad else probs
    blocks = w.reshape(bsz, -1, block)
    # Block sums in float32 (a float64 reduction over all B×V entries costs ten times more), then
    # cumulated in float64; the inner inversion clamps to the block, so rounding never picks a weight-0 entry.
    block_cdf = blocks.sum(-1, dtype=torch.promote_types(probs.dtype, torch.float32)).double().cumsum(-1)  # (B, V/block)
    u = u * block_cdf[:, -1:]
    b = _draw_below(block_cdf, u)  # (B, 1) chosen block
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(u))
    inner_cdf = blocks.gather(1, b[:, :, None].expand(-1, -1, block)).squeeze(1).double().cumsum(-1)
    j = _draw_below(inner_cdf, u - before)
    return (b * block + j).squeeze(-1), block_cdf[:, -1]


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None, u: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one token per row of (B, V) logits; temperature 0 means greedy. ``u``: the draw's uniform numbers
    (:func:`uniforms`) when the caller draws them itself (the compiled decode step); otherwise ``generator``'s."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logits = filter_logits(logits, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    if u is None:
        return categorical(probs, generator)
    return categorical_from_uniform(probs, u)[0]


def autocast_dtype(device) -> torch.dtype | None:
    """The autocast dtype samplers run under on ``device``: bfloat16 on CUDA, none elsewhere (CPU runs fp32)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def sampling_autocast(device):
    """The context every sampler runs its network passes in: bf16 autocast on CUDA (:func:`autocast_dtype`),
    nothing elsewhere. Logits are cast back to float32 before guidance mixing and drawing."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GFTError(f"temperature must be a finite number ≥ 0, got {temperature}")
    if top_k < 0:
        raise GFTError(f"top_k must be ≥ 0 (0 disables it), got {top_k}")
    if not (0.0 < top_p <= 1.0):
        raise GFTError(f"top_p must lie in (0, 1] (1 disables it), got {top_p}")


@dataclass
class SamplingStats:
    """What sampling cost, accumulated over calls: pass one to a sampler as ``stats=`` and read it afterwards.

    ``forward_rows``: Σ over transformer passes of the rows in the pass (2B per pass under CFG); ``passes``: the
    number of transformer calls; ``head_rows``: rows through a diffusion head (MAR: every denoising step of every
    drawn token, both CFG halves), 0 for categorical heads; ``images``: images sampled.
    """

    images: int = 0
    forward_rows: int = 0
    passes: int = 0
    head_rows: int = 0

    def network(self, rows: int) -> None:
        """Record one transformer pass over ``rows`` rows."""
        self.forward_rows += int(rows)
        self.passes += 1

    @property
    def nfe_per_image(self) -> float:
        """Network evaluations per image: transformer rows ÷ images (CFG counts both halves)."""
        return self.forward_rows / self.images if self.images else 0.0

    @property
    def head_evals_per_image(self) -> float:
        return self.head_rows / self.images if self.images else 0.0

    def as_dict(self) -> dict:
        return {"images": self.images, "passes": self.passes, "nfe_per_image": self.nfe_per_image,
                "head_evals_per_image": self.head_evals_per_image}


def check_cfg_schedule(cfg_schedule: str, supported: tuple[str, ...]) -> None:
    if cfg_schedule not in supported:
        raise GFTError(f"cfg_schedule must be one of {list(supported)} for this model family, got {cfg_schedule!r}")


def resolve_guidance(batch: int, beta, cfg_scale, has_beta_input: bool, device) -> tuple[torch.Tensor | None, float | None]:
    """Validate the guidance arguments of a sampler: returns (β tensor or None, cfg_scale or None).

    GFT mode: ``beta`` given (one pass). CFG mode: ``cfg_scale`` given (two passes); a β-model then uses ``beta``
    (default 1) for its conditional rows and 1 for its unconditional rows. Neither, or ``cfg_scale=1``: the
    conditional model, one pass (β = 1 for a β-model).
    """
    if cfg_scale is not None:
        if isinstance(cfg_scale, bool) or not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale)):
            raise GFTError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        if cfg_scale == 1:
            cfg_scale = None  # u + 1·(c − u) = c: the conditional model, one pass
    if beta is not None and not has_beta_input:
        raise GFTError("this model has no β input (it was trained with the CFG objective): use cfg_scale instead")
    if has_beta_input:
        beta = check_beta(1.0 if beta is None else beta, batch, device=device)
    return beta, cfg_scale


def guided_batch(model, labels, beta, cfg_scale, device) -> tuple[torch.Tensor, torch.Tensor | None, float | None, int]:
    """The rows a sampler runs: the B requested classes (checked; the null class is refused) with their β, then, when
    ``cfg_scale`` is given, B unconditional rows (null class, β = 1). Returns (labels, β or None, cfg_scale, B)."""
    if labels is None or (hasattr(labels, "__len__") and len(labels) == 0):
        raise GFTError("no class labels to sample: give at least one class id")
    labels = check_labels(labels, model.num_classes, allow_null=False).to(device)
    bsz = labels.shape[0]
    beta, cfg_scale = resolve_guidance(bsz, beta, cfg_scale, model.beta_embedder is not None, device)
    if cfg_scale is not None:
        labels = torch.cat([labels, torch.full_like(labels, model.null_class)])
        if beta is not None:
            beta = torch.cat([beta, torch.ones_like(beta)])
    return labels, beta, cfg_scale, bsz
