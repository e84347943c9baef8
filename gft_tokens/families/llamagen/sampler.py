"""Sampling for LlamaGen-style autoregressive models: prefill the condition, then one token per step.

GFT mode (``beta=...``): one forward pass per token for a batch of B. CFG mode (``cfg_scale=w``): the conditional
and unconditional rows run together as a batch of 2B and are mixed as ``u + w·(c − u)`` (LlamaGen's convention);
the sampled token is fed to both halves. Both modes use the same static KV cache, allocated once per call.

``compile=True`` runs every token after the first through one ``torch.compile``d step — the model's static-shape
:meth:`~gft_tokens.families.llamagen.model.LlamaGen.decode_at` (position as a device tensor, the whole preallocated
cache attended to under a mask), the guidance mix, filtering and the draw — with the draw's uniform numbers taken
from ``generator`` outside the graph, in the order the eager sampler takes them: with a fixed generator both give
the same tokens. The first call per model shape and batch compiles (tens of seconds on a CPU); later calls reuse it.
On CUDA every sampler runs under bf16 autocast (:func:`~gft_tokens.sampling.common.sampling_autocast`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ...errors import GFTError
from ...nn import eval_mode
from ...sampling.common import (SamplingStats, autocast_dtype, check_cfg_schedule, check_sampling_args, guided_batch,
                                sample_from_logits, sampling_autocast, uniforms)

CFG_SCHEDULES = ("constant",)


def _pick(logits, cfg_scale, temperature, top_k, top_p, generator=None, u=None):
    """Mix the CFG halves (when ``cfg_scale`` is given) and draw one token per image; returns the tokens for
    every row of the pass (both halves under CFG)."""
    if cfg_scale is not None:
        cond, uncond = logits.chunk(2)
        logits = uncond + cfg_scale * (cond - uncond)
    tok = sample_from_logits(logits, temperature, top_k, top_p, generator, u)
    return torch.cat([tok, tok]) if cfg_scale is not None else tok


def _static_step(model, tokens, pos, cache, cfg_scale, temperature, top_k, top_p, u):
    """One decode step of fixed shapes, what ``torch.compile`` captures: forward at ``pos``, mix, draw from ``u``."""
    return _pick(model.decode_at(tokens, pos, cache), cfg_scale, temperature, top_k, top_p, u=u)


_COMPILED_STEP = None


def compiled_step():
    """:func:`_static_step` under ``torch.compile`` (one wrapper per process; dynamo keeps a graph per model shape
    and batch, guarded on shapes, so the position never triggers a recompile)."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_static_step, fullgraph=True, dynamic=False)
    return _COMPILED_STEP


@torch.no_grad()
def sample(model, labels, *, beta=None, cfg_scale: float | None = None, cfg_schedule: str = "constant",
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           use_cache: bool = True, compile: bool = False, progress: bool = False,
           stats: SamplingStats | None = None) -> torch.Tensor:
    """Generate image codes (B, N) for class ``labels`` (B,).

    Args:
        beta: GFT pseudo-temperature in [0, 1], a number or a (B,) tensor; 1 = conditional model, smaller = more
            guidance-like (β = 1/w for CFG scale w). Requires a model trained with GFT.
        cfg_scale: classifier-free guidance scale w (two passes per token; 1 = the conditional model, one pass).
            With a GFT model, β applies to the conditional rows.
        cfg_schedule: ``"constant"`` only (the same w at every token).
        generator: the random numbers of the draws; it must live on the model's device.
        use_cache: False recomputes the whole prefix every step (the reference for testing the cache).
        compile: run the decode steps through ``torch.compile`` (the static-shape step; needs the cache).
        stats: a :class:`~gft_tokens.sampling.common.SamplingStats` that receives this call's cost.
    """
    check_sampling_args(temperature, top_k, top_p)
    check_cfg_schedule(cfg_schedule, CFG_SCHEDULES)
    if compile and not use_cache:
        raise GFTError("compile=True compiles the KV-cached decode step: it needs use_cache=True")
    with eval_mode(model):
        device = model.tok_embeddings.weight.device
        labels, beta, cfg_scale, bsz = guided_batch(model, labels, beta, cfg_scale, device)
        rows = labels.shape[0]
        n = model.config.block_size
        codes = torch.empty(rows, n, dtype=torch.long, device=device)
        cache = model.allocate_cache(rows, dtype=autocast_dtype(device)) if use_cache else None
        step = compiled_step() if compile else None
        pos = None
        with sampling_autocast(device):
            for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
                if stats is not None:
                    stats.network(rows)
                if i == 0:
                    logits = model.prefill(labels, beta, cache) if use_cache else model.next_logits(codes[:, :0], labels, beta)
                elif step is not None:
                    u = uniforms(bsz, generator, device) if temperature > 0 else None
                    codes[:, i] = step(model, codes[:, i - 1:i], pos, cache, cfg_scale, temperature, top_k, top_p, u)
                    pos += 1  # on the device: no host round trip, no new shape
                    cache.advance(1)
                    continue
                elif use_cache:
                    logits = model.decode(codes[:, i - 1:i], cache)
                else:
                    logits = model.next_logits(codes[:, :i], labels, beta)
                codes[:, i] = _pick(logits, cfg_scale, temperature, top_k, top_p, generator)
                if step is not None:
                    pos = torch.full((1,), cache.length, dtype=torch.long, device=device)
        if stats is not None:
            stats.images += bsz
        return codes[:bsz]


# -- what the benchmark compares the sampler with ---------------------------------------------------------------
def _bench_state(model, labels, beta, cfg_scale):
    device = model.tok_embeddings.weight.device
    labels, beta, cfg_scale, bsz = guided_batch(model, labels, beta, cfg_scale, device)
    return device, labels, beta, cfg_scale, model.allocate_cache(labels.shape[0], dtype=autocast_dtype(device))


@torch.no_grad()
def forward_passes(model, labels, *, beta=None, cfg_scale=None) -> None:
    """The network passes of one :func:`sample` call and nothing else — the prefill, then one cached decode per
    token fed a fixed token — without the guidance mix, filtering, draw or code bookkeeping: the bare forward
    (transformer + head) that the sampler's own per-token overhead is measured against."""
    with eval_mode(model):
        device, labels, beta, _, cache = _bench_state(model, labels, beta, cfg_scale)
        tok = torch.zeros(labels.shape[0], 1, dtype=torch.long, device=device)
        with sampling_autocast(device):
            model.prefill(labels, beta, cache)
            for _ in range(model.config.block_size - 1):
                model.decode(tok, cache)


def decode_step(model, labels, *, beta=None, cfg_scale=None, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, generator=None):
    """One sampling step in the middle of a generation, prepared: returns a zero-argument call that runs what
    :func:`sample` runs per token (cached decode, guidance mix, filtering, draw, the write into the codes) at the
    same position every time — what ``bench_sampling.py --profile`` profiles."""
    device, labels, beta, cfg_scale, cache = _bench_state(model, labels, beta, cfg_scale)
    rows, n = labels.shape[0], model.config.block_size
    codes = torch.zeros(rows, n, dtype=torch.long, device=device)
    with torch.no_grad(), sampling_autocast(device):
        model.prefill(labels, beta, cache)
        model.decode(codes[:, :n // 2 - 1], cache)  # the cache holds the first half of the image
    middle = cache.length

    @torch.no_grad()
    def step():
        cache.length = middle
        with sampling_autocast(device):
            logits = model.decode(codes[:, n // 2 - 1:n // 2], cache)
            codes[:, n // 2] = _pick(logits, cfg_scale, temperature, top_k, top_p, generator)

    model.eval()
    return step
