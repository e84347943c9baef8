"""The training objectives: Guidance-Free Training (GFT) and the classifier-free-guidance (CFG) baseline.

Both are family-agnostic. A model family supplies ``logits_fn(cond, beta)`` — teacher-forced logits for the batch's
targets given a condition and a per-sample β (or ``None`` for a model without β input) — returning either

* a logits tensor ``(B, N, V)``, or
* :class:`HeadInputs` — the final hidden states ``(B, N, D)`` plus the output projection — which lets the loss be
  computed chunk by chunk without ever materialising the full ``(B, N, V)`` logits of either branch
  (:func:`fused_mixed_cross_entropy`; its gradients equal the naive form's).

GFT (Chen et al. 2025, "Visual Generation Without Guidance"). The network is the *sampling* model
``ℓ_s(x | c, β)``; the conditional model is defined implicitly and trained by plain maximum likelihood::

    ℓ_c = β · ℓ_s(x | c, β) + (1 − β) · stopgrad(ℓ_u(x))          loss = CE(ℓ_c, x)

with β ~ U(0, 1) per sample, the condition dropped with probability 0.1 (dropped rows get β *input* 1, as in the
reference implementation, and keep their sampled β as mixing weight), and ℓ_u = the same network at the null
condition with β = 1, evaluated without gradient in eval mode. At sampling time ℓ_s at a chosen β is used alone —
one forward pass — and corresponds to CFG scale w = 1/β (``u + w·(c − u)``).

CFG: the same network trained on ``CE(ℓ(x | c'), x)`` where c' is c with probability 0.9 and the null condition
otherwise; sampling mixes a conditional and an unconditional pass.

The skeleton — β draw, condition drop, the null branch in eval mode without gradient — is written once
(:func:`gft_loss`, :func:`cfg_loss`). What is mixed and how the mixture is scored is a *loss plug-in*:
:data:`CROSS_ENTROPY` (discrete tokens: naive or fused chunked CE on mixed logits) or :data:`EPS_MSE` (MAR's
continuous tokens: the diffusion head's ε predictions mixed the same way, ‖ε_c − ε‖²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GFTError
from .nn import OutputHead, eval_mode


@dataclass
class HeadInputs:
    """Final hidden states and the output layer (an :class:`~gft_tokens.nn.OutputHead`).

    The loss is computed inside the head's own forward, so that under ZeRO-3 its partitioned weight is gathered
    for the forward and, through DeepSpeed's backward hooks, for the backward.
    """

    hidden: torch.Tensor  # (B, N, D)
    head: OutputHead

    def logits(self) -> torch.Tensor:
        return self.head(self.hidden).float()


LogitsFn = Callable[[torch.Tensor, Union[torch.Tensor, None]], Union[torch.Tensor, HeadInputs]]


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, differentiable
    cond_loss: torch.Tensor  # CE of the network's own logits (ℓ_s for GFT), detached, NaN if not asked for
    beta: torch.Tensor  # (B,) mixing weights (all ones for CFG)
    dropped: torch.Tensor  # (B,) bool, rows trained at the null condition


def drop_condition(cond: torch.Tensor, null_cond, drop: torch.Tensor) -> torch.Tensor:
    """``cond`` with rows where ``drop`` is True replaced by ``null_cond`` (a scalar or a per-row tensor). A
    condition object with its own null (a :class:`~gft_tokens.conditioning.Caption`) drops rows itself."""
    if hasattr(cond, "with_dropped"):
        return cond.with_dropped(drop)
    null = torch.as_tensor(null_cond, dtype=cond.dtype, device=cond.device)
    mask = drop.view(drop.shape[0], *([1] * (cond.ndim - 1)))
    return torch.where(mask, null, cond)


def _null_batch(cond, null_cond):
    return drop_condition(cond, null_cond, torch.ones(len(cond), dtype=torch.bool, device=_device(cond)))


def _device(cond) -> torch.device:
    return cond.features.device if hasattr(cond, "features") else cond.device


# ---------------------------------------------------------------------------------------------------------------
# Cross-entropy on mixed logits: naive and fused/chunked
# ---------------------------------------------------------------------------------------------------------------
def _flatten(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, N, ...) → (M, ...) keeping positions where ``mask`` (B, N) is True (all when None)."""
    return x.flatten(0, 1) if mask is None else x[mask]


def _row_beta(beta: torch.Tensor, n: int, mask: torch.Tensor | None) -> torch.Tensor:
    return _flatten(beta[:, None].expand(-1, n), mask)


def mixed_cross_entropy(logits_s: torch.Tensor, logits_u: torch.Tensor | None, beta: torch.Tensor | None,
                        targets: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: materialise ``β·ℓ_s + (1−β)·sg(ℓ_u)`` (B, N, V) and take the mean CE over kept positions.

    Returns ``(loss, ce_of_logits_s)``.
    """
    n = targets.shape[1]
    t = _flatten(targets, mask)
    zs = _flatten(logits_s, mask).float()
    own = F.cross_entropy(zs.detach(), t)
    if logits_u is None:
        return F.cross_entropy(zs, t), own
    b = _row_beta(beta, n, mask)[:, None]
    z = b * zs + (1.0 - b) * _flatten(logits_u, mask).float().detach()
    return F.cross_entropy(z, t), own


def fused_mixed_cross_entropy(head_s: HeadInputs, head_u: HeadInputs | None, beta: torch.Tensor | None,
                              targets: torch.Tensor, mask: torch.Tensor | None = None, chunk_rows: int | None = None,
                              want_own: bool = True, **head_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Same value and gradients as :func:`mixed_cross_entropy` on ``head.logits()``, without full logits.

    The second output (CE of the network's own logits) costs one more projection; it is NaN unless ``want_own``.
    """
    n = targets.shape[1]
    h_s = _flatten(head_s.hidden, mask)
    h_u = None if head_u is None else _flatten(head_u.hidden, mask).detach()
    b = None if head_u is None else _row_beta(beta, n, mask).float()
    return head_s.head(h_s, targets=_flatten(targets, mask), hidden_u=h_u, beta=b, chunk_rows=chunk_rows,
                       want_own=want_own, **head_kwargs)


class GFTLossPlugin:
    """How the GFT/CFG skeleton scores one batch: ``plugin(out_s, out_u, beta, targets, mask, ...)``.

    ``out_s`` is the differentiable branch's output, ``out_u`` the unconditional branch's (computed without
    gradient in eval mode) or None for the CFG baseline (no mixing). Returns ``(loss, own)``: the loss of the mix
    and the loss of the network's own output alone (detached; NaN when not ``want_own``).
    """

    name = ""

    def check_targets(self, targets: torch.Tensor, mask: torch.Tensor | None) -> None:
        raise NotImplementedError

    def __call__(self, out_s, out_u, beta, targets, mask, *, generator=None, module=None, chunk_rows=None,
                 want_own=True) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class CrossEntropyPlugin(GFTLossPlugin):
    """Discrete tokens: CE of ``β·ℓ_s + (1 − β)·sg(ℓ_u)`` — fused and chunked when the family returns
    :class:`HeadInputs`, on full logits otherwise."""

    name = "cross-entropy"

    def check_targets(self, targets, mask):
        if targets.ndim != 2:
            raise GFTError(f"targets must have shape (B, N), got {tuple(targets.shape)}")
        if mask is not None and mask.shape != targets.shape:
            raise GFTError(f"loss mask shape {tuple(mask.shape)} does not match targets {tuple(targets.shape)}")

    def __call__(self, out_s, out_u, beta, targets, mask, *, generator=None, module=None, chunk_rows=None,
                 want_own=True):
        if isinstance(out_s, HeadInputs):
            if out_u is not None and not isinstance(out_u, HeadInputs):
                raise TypeError("both branches must return HeadInputs or both logits")
            return fused_mixed_cross_entropy(out_s, out_u, beta, targets, mask, chunk_rows, want_own)
        if isinstance(out_u, HeadInputs):
            out_u = out_u.logits()
        return mixed_cross_entropy(out_s, out_u, beta, targets, mask)


@dataclass
class DiffusionInputs:
    """What a continuous model's ``z_fn(cond, beta)`` returns: per-token conditions z (B, N, D) and its diffusion
    head — any module ``head(x_t, t, z) -> ε`` with ``batch_mul`` and a ``train_diffusion`` (``num_timesteps``,
    ``q_sample``), e.g. :class:`gft_tokens.families.mar.diffloss.DiffusionHead`."""

    z: torch.Tensor
    head: nn.Module


class EpsMSEPlugin(GFTLossPlugin):
    """Continuous tokens (MAR): one (t, ε, x_t) per masked token, repeated ``batch_mul`` times and shared by both
    branches; ε_c = β·ε_s + (1 − β)·sg(ε_u) scored by ‖ε_c − ε‖² over the positions of the mask."""

    name = "eps-mse"

    def check_targets(self, targets, mask):
        if targets.ndim != 3 or not targets.is_floating_point():
            raise GFTError(f"targets must be float latents (B, N, C), got {tuple(targets.shape)} {targets.dtype}")
        if mask is not None and mask.shape != targets.shape[:2]:
            raise GFTError(f"loss mask shape {tuple(mask.shape)} does not match targets {tuple(targets.shape[:2])}")

    def __call__(self, out_s, out_u, beta, targets, mask, *, generator=None, module=None, chunk_rows=None,
                 want_own=True):
        if mask is None:
            mask = torch.ones(targets.shape[:2], dtype=torch.bool, device=targets.device)
        head, mul = out_s.head, out_s.head.batch_mul
        x0 = targets[mask].float().repeat(mul, 1)
        t = torch.randint(head.train_diffusion.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = head.train_diffusion.q_sample(x0, t, noise)
        eps_s = head(x_t, t, out_s.z[mask].repeat(mul, 1))
        if out_u is None:
            loss = (eps_s - noise).pow(2).mean()
            return loss, loss.detach()
        with torch.no_grad(), eval_mode(module):
            eps_u = out_u.head(x_t, t, out_u.z[mask].repeat(mul, 1))
        b = beta[:, None, None].expand(-1, targets.shape[1], 1)[mask].repeat(mul, 1)  # (R, 1)
        loss = (b * eps_s + (1.0 - b) * eps_u.detach() - noise).pow(2).mean()
        own = (eps_s.detach() - noise).pow(2).mean() if want_own else torch.tensor(float("nan"))
        return loss, own


CROSS_ENTROPY = CrossEntropyPlugin()
EPS_MSE = EpsMSEPlugin()


# ---------------------------------------------------------------------------------------------------------------
# The objectives
# ---------------------------------------------------------------------------------------------------------------
def gft_loss(logits_fn: LogitsFn, targets: torch.Tensor, cond: torch.Tensor, *, null_cond,
             module: nn.Module | None = None, drop_prob: float = 0.1, beta: torch.Tensor | None = None,
             drop: torch.Tensor | None = None, generator: torch.Generator | None = None,
             loss_mask: torch.Tensor | None = None, chunk_rows: int | None = None,
             want_own: bool = True, loss: GFTLossPlugin = CROSS_ENTROPY) -> ObjectiveOutput:
    """Guidance-Free Training loss for one batch.

    Args:
        logits_fn: ``(cond, beta) -> logits (B, N, V) | HeadInputs | DiffusionInputs`` for this batch's targets
            (teacher forcing).
        targets: (B, N) target codes, or (B, N, C) latents for :data:`EPS_MSE`.
        cond: (B, ...) conditions (class ids); ``null_cond`` is the null condition (e.g. ``num_classes``).
        module: the network behind ``logits_fn``; put in eval mode for the unconditional branch.
        drop_prob: probability of training a row at the null condition.
        beta: (B,) β values; drawn U(0, 1) when None. ``drop``: (B,) bool; drawn when None.
        loss_mask: (B, N) bool, positions that count (masked models); all when None.
        want_own: also report the loss of the network's own output (``cond_loss``); with :class:`HeadInputs`
            that costs one extra output projection, so the training loop asks for it on logging steps only.
        loss: the plug-in that mixes and scores the two branches (:data:`CROSS_ENTROPY`, :data:`EPS_MSE`).
    """
    loss.check_targets(targets, loss_mask)
    bsz, device = targets.shape[0], targets.device
    if beta is None:
        beta = torch.rand(bsz, generator=generator, device=device)
    if drop is None:
        drop = torch.rand(bsz, generator=generator, device=device) < drop_prob
    beta, drop = beta.float().to(device), drop.to(device)
    cond_in = drop_condition(cond, null_cond, drop)
    beta_in = torch.where(drop, torch.ones_like(beta), beta)

    with torch.no_grad(), eval_mode(module):
        out_u = logits_fn(_null_batch(cond, null_cond), torch.ones_like(beta))
    out_s = logits_fn(cond_in, beta_in)
    value, own = loss(out_s, out_u, beta, targets, loss_mask, generator=generator, module=module,
                      chunk_rows=chunk_rows, want_own=want_own)
    return ObjectiveOutput(value, own.detach(), beta, drop)


def cfg_loss(logits_fn: LogitsFn, targets: torch.Tensor, cond: torch.Tensor, *, null_cond,
             drop_prob: float = 0.1, drop: torch.Tensor | None = None, generator: torch.Generator | None = None,
             loss_mask: torch.Tensor | None = None, chunk_rows: int | None = None, want_own: bool = True,
             loss: GFTLossPlugin = CROSS_ENTROPY, **_unused) -> ObjectiveOutput:
    """The CFG baseline: conditional maximum likelihood with label dropout (β is not an input: ``beta=None``)."""
    loss.check_targets(targets, loss_mask)
    bsz, device = targets.shape[0], targets.device
    if drop is None:
        drop = torch.rand(bsz, generator=generator, device=device) < drop_prob
    out = logits_fn(drop_condition(cond, null_cond, drop.to(device)), None)
    value, own = loss(out, None, None, targets, loss_mask, generator=generator, chunk_rows=chunk_rows,
                      want_own=want_own)
    return ObjectiveOutput(value, own.detach(), torch.ones(bsz, device=device), drop)


OBJECTIVES = {"gft": gft_loss, "cfg": cfg_loss}
