"""Building blocks shared by the model families.

Layers initialise themselves in ``reset_parameters`` (called by their own constructor). That keeps every model
fully initialised by construction, also under ``deepspeed.zero.Init``, which partitions each sub-module's
parameters right after that sub-module's constructor returns — an ``apply(init_fn)`` pass afterwards would only
see empty partitions.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Linear(nn.Linear):
    """``nn.Linear`` initialised N(0, std²) (bias 0), or all zeros with ``zero_init=True``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, std: float = 0.02,
                 zero_init: bool = False, **kwargs):
        object.__setattr__(self, "init_std", float(std))
        object.__setattr__(self, "zero_init", bool(zero_init))
        super().__init__(in_features, out_features, bias=bias, **kwargs)

    def reset_parameters(self) -> None:
        if self.zero_init:
            nn.init.zeros_(self.weight)
        else:
            nn.init.normal_(self.weight, mean=0.0, std=self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


def default_chunk_rows(vocab: int) -> int:
    """Rows per chunk so that one chunk of fp32 logits is about 16 MiB."""
    return max(16, (1 << 22) // max(1, vocab))


class _FusedMixedCE(torch.autograd.Function):
    """Mean CE of the mixed logits ``β·(h_s W^T + b) + (1−β)·sg(h_u W^T + b)`` over rows, chunk by chunk.

    The head is affine, so the mixed logits are ``h_mix W^T + b`` with ``h_mix = β·h_s + (1−β)·h_u``: one
    projection per row instead of two, whatever the objective. Gradients follow the naive form exactly — the
    unconditional term is a constant, so ``∂/∂h_s = β·g W``, ``∂/∂W = Σ β·gᵀ h_s``, ``∂/∂b = Σ β·g`` with
    ``g = softmax(z) − onehot``. When the whole (rows × vocab) gradient fits in ``keep_bytes`` it is kept from the
    forward pass; otherwise the backward pass recomputes the logits chunk by chunk and the full logits never exist.
    With ``want_own`` the CE of ``h_s W^T + b`` alone (the network's own logits) is returned too, for logging.
    """

    @staticmethod
    def forward(ctx, h_s, h_u, weight, bias, beta, targets, chunk, keep_bytes, want_own):
        m, vocab = h_s.shape[0], weight.shape[0]
        mixed = h_u is not None
        h = torch.lerp(h_u, h_s, beta[:, None].to(h_s.dtype)) if mixed else h_s
        keep = m * vocab * 4 <= keep_bytes
        grads = torch.empty(m, vocab, dtype=torch.float32, device=h_s.device) if keep else None
        loss = torch.zeros((), dtype=torch.float64, device=h_s.device)
        own = torch.full((), float("nan"), dtype=torch.float64, device=h_s.device)
        if want_own:
            own.zero_()
        for i in range(0, m, chunk):
            sl = slice(i, i + chunk)
            t = targets[sl, None]
            z = F.linear(h[sl], weight, bias).float()
            lse = torch.logsumexp(z, -1, keepdim=True)
            loss += (lse - z.gather(1, t)).sum().double()
            if keep:
                g = torch.exp(z - lse, out=grads[sl])
                g.scatter_add_(1, t, torch.full_like(t, -1.0, dtype=g.dtype))
            if want_own:
                zs = F.linear(h_s[sl], weight, bias).float() if mixed else z
                own += (torch.logsumexp(zs, -1) - zs.gather(1, t).squeeze(1)).sum().double()
        ctx.save_for_backward(h_s, h if mixed else None, weight, bias, beta, targets, grads)
        ctx.chunk, ctx.mixed = chunk, mixed
        ctx.mark_non_differentiable(own)
        denom = max(m, 1)
        return (loss / denom).float(), (own / denom).float()

    @staticmethod
    def backward(ctx, grad_loss, _grad_own):
        h_s, h, weight, bias, beta, targets, grads = ctx.saved_tensors
        h = h_s if h is None else h
        chunk, m = ctx.chunk, h_s.shape[0]
        scale = grad_loss.float() / max(m, 1)
        grad_h = torch.empty_like(h_s) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[2] else None
        grad_b = (torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
                  if bias is not None and ctx.needs_input_grad[3] else None)
        for i in range(0, m, chunk):
            sl = slice(i, i + chunk)
            if grads is not None:
                g = grads[sl]
            else:
                g = torch.softmax(F.linear(h[sl], weight, bias).float(), dim=-1)
                t = targets[sl, None]
                g.scatter_add_(1, t, torch.full_like(t, -1.0, dtype=g.dtype))
            g = g * (scale * beta[sl, None].float() if ctx.mixed else scale)  # d mix / d ℓ_s = β
            if grad_h is not None:
                grad_h[sl] = (g.to(weight.dtype) @ weight).to(h_s.dtype)
            if grad_w is not None:
                grad_w += g.t() @ h_s[sl].float()
            if grad_b is not None:
                grad_b += g.sum(0)
        return (grad_h, None, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None)


KEEP_GRAD_BYTES = 64 * 2**20


class OutputHead(Linear):
    """The vocabulary projection. ``head(h)`` gives logits; ``head(h, targets=...)`` gives the mean cross-entropy
    of ``β·head(h) + (1−β)·head(hidden_u)`` (or of ``head(h)`` alone) computed in chunks of rows, never holding
    full (rows × vocab) logits beyond ``keep_bytes`` — returned as ``(loss, CE of head(h) or NaN)``.
    """

    def forward(self, hidden, targets=None, hidden_u=None, beta=None, chunk_rows=None, keep_bytes=KEEP_GRAD_BYTES,
                want_own=False):
        if targets is None:
            return super().forward(hidden)
        chunk = chunk_rows or default_chunk_rows(self.out_features)
        return _FusedMixedCE.apply(hidden, hidden_u, self.weight, self.bias, beta, targets, chunk, keep_bytes,
                                   want_own)


class Embedding(nn.Embedding):
    """``nn.Embedding`` initialised N(0, std²)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 0.02, **kwargs):
        object.__setattr__(self, "init_std", float(std))
        super().__init__(num_embeddings, embedding_dim, **kwargs)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, weight initialised to ones."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LlamaGen/LLaMA SwiGLU width: 2/3 of 4·dim, optionally scaled, rounded *up* to a multiple."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return hidden if hidden % multiple_of == 0 else hidden + multiple_of - hidden % multiple_of


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``, no biases."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, std: float = 0.02):
        super().__init__()
        self.w1 = Linear(dim, hidden, std=std)
        self.w3 = Linear(dim, hidden, std=std)
        self.w2 = Linear(hidden, dim, std=std)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.dropout(out) if self.training else out


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embeddings
# ---------------------------------------------------------------------------------------------------------------
def rope_frequencies(n_pairs: int, base: float, dim: int) -> torch.Tensor:
    """``base^(-2k/dim)`` for k = 0 .. n_pairs-1."""
    return 1.0 / base ** (torch.arange(0, 2 * n_pairs, 2, dtype=torch.float64)[:n_pairs] / dim)


def rope_2d_table(grid: int, head_dim: int, base: float = 10000.0, prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (prefix + grid², head_dim/2) for LlamaGen's 2D RoPE.

    Rotation pairs are interleaved (``x[..., 0::2]``, ``x[..., 1::2]``); the first head_dim/4 pairs rotate with the
    token's row, the last head_dim/4 with its column (frequencies ``base^(-2k/(head_dim/2))``), positions in
    row-major order. The ``prefix`` (class) positions get cos = sin = 0, exactly as LlamaGen does: their query
    and key become zero, so the class token is attended to with logit 0 and acts through its value vector only.
    That choice is part of the published checkpoints, so it is reproduced here.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = rope_frequencies(half // 2, base, half)  # (hd/4,)
    t = torch.arange(grid, dtype=torch.float64)
    axis = torch.outer(t, freqs)  # (grid, hd/4)
    angles = torch.cat(
        [axis[:, None, :].expand(grid, grid, -1), axis[None, :, :].expand(grid, grid, -1)], dim=-1
    ).reshape(grid * grid, half)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros(prefix, half, dtype=torch.float64)
    return torch.cat([zeros, cos]).float(), torch.cat([zeros, sin]).float()


def rope_cis(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The complex rotation table ``cos + i·sin`` (T, D/2) that :func:`apply_rope_table` multiplies by."""
    return torch.complex(cos.float(), sin.float())


def apply_rope_table(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, T, H, D) by a per-position table; computed in fp32.

    ``rope`` is either complex (T, D/2) (:func:`rope_cis`: one complex multiplication per pair, the fastest form in
    eager mode) or real (T, D/2, 2) holding (cos, sin) — the same arithmetic written with real tensors, which
    ``torch.compile`` turns into one fused kernel. Both give bit-identical results on CPU (tested).
    Pair (x₀, x₁) ↦ (x₀·cos − x₁·sin, x₁·cos + x₀·sin).
    """
    if rope.is_complex():
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(xc * rope[None, :, None, :]).flatten(-2).type_as(x)
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = rope[None, :, None, :, 0], rope[None, :, None, :, 1]
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2).type_as(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, T, H, D) by per-position tables cos/sin (T, D/2); computed in fp32.

    Pair (x₀, x₁) ↦ (x₀·cos − x₁·sin, x₁·cos + x₀·sin): one complex multiplication per pair. A caller that rotates
    many tensors by the same positions builds :func:`rope_cis` once and calls :func:`apply_rope_table`.
    """
    return apply_rope_table(x, rope_cis(cos, sin))


# ---------------------------------------------------------------------------------------------------------------
# Sinusoidal embedding (β, timesteps)
# ---------------------------------------------------------------------------------------------------------------
def sinusoidal_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """DiT-style embedding of scalars ``t`` (B,) → (B, dim): ``[cos(t·f_k), sin(t·f_k)]``, f_k = P^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer): where its samplers' generators and tensors live."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def sampling_generator(module: nn.Module, seed: int) -> torch.Generator:
    """A random generator on ``module``'s device seeded with ``seed`` (a CPU generator cannot drive CUDA draws)."""
    return torch.Generator(device=module_device(module)).manual_seed(int(seed))


@contextlib.contextmanager
def eval_mode(module: nn.Module | None):
    """Temporarily put ``module`` in eval mode (dropout off), restoring each sub-module's own flag afterwards."""
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
