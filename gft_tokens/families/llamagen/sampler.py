"""Sampling for LlamaGen-style autoregressive models: prefill the condition, then one token per step.

GFT mode (``beta=...``): one forward pass per token for a batch of B. CFG mode (``cfg_scale=w``): the conditional
and unconditional rows run together as a batch of 2B and are mixed as ``u + w·(c − u)`` (LlamaGen's convention);
the sampled token is fed to both halves. Both modes use the same static KV cache, allocated once per call.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ...nn import eval_mode
from ...sampling.common import SamplingStats, check_cfg_schedule, check_sampling_args, guided_batch, sample_from_logits

CFG_SCHEDULES = ("constant",)


@torch.no_grad()
def sample(model, labels, *, beta=None, cfg_scale: float | None = None, cfg_schedule: str = "constant",
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           use_cache: bool = True, progress: bool = False, stats: SamplingStats | None = None) -> torch.Tensor:
    """Generate image codes (B, N) for class ``labels`` (B,).

    Args:
        beta: GFT pseudo-temperature in [0, 1], a number or a (B,) tensor; 1 = conditional model, smaller = more
            guidance-like (β = 1/w for CFG scale w). Requires a model trained with GFT.
        cfg_scale: classifier-free guidance scale w (two passes per token; 1 = the conditional model, one pass).
            With a GFT model, β applies to the conditional rows.
        cfg_schedule: ``"constant"`` only (the same w at every token).
        use_cache: False recomputes the whole prefix every step (the reference for testing the cache).
        stats: a :class:`~gft_tokens.sampling.common.SamplingStats` that receives this call's cost.
    """
    check_sampling_args(temperature, top_k, top_p)
    check_cfg_schedule(cfg_schedule, CFG_SCHEDULES)
    with eval_mode(model):
        device = model.tok_embeddings.weight.device
        labels, beta, cfg_scale, bsz = guided_batch(model, labels, beta, cfg_scale, device)
        cfg = cfg_scale is not None
        rows = labels.shape[0]
        n = model.config.block_size
        codes = torch.empty(rows, n, dtype=torch.long, device=device)
        cache = model.allocate_cache(rows) if use_cache else None

        def pick(logits):
            if cfg:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            tok = sample_from_logits(logits, temperature, top_k, top_p, generator)
            return torch.cat([tok, tok]) if cfg else tok

        for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
            if i == 0:
                logits = model.prefill(labels, beta, cache) if use_cache else model.next_logits(codes[:, :0], labels, beta)
            elif use_cache:
                logits = model.decode(codes[:, i - 1:i], cache)
            else:
                logits = model.next_logits(codes[:, :i], labels, beta)
            if stats is not None:
                stats.network(rows)
            codes[:, i] = pick(logits)
        if stats is not None:
            stats.images += bsz
        return codes[:bsz]
