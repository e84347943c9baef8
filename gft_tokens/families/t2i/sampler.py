"""Sampling a text-to-image LlamaGen: the caption prefix into a static KV cache, then one token per step.

GFT (``beta``): one pass of B rows per token. CFG (``cfg_scale`` w): B caption rows + B null-caption rows (β = 1) as
one 2B batch, mixed as ``u + w·(c − u)``; the drawn token is fed to both halves. ``cfg_scale=1``: one pass. The null
rows are the captions marked dropped, so they carry the captions' padding masks: the embedder makes them all
visible (``null_caption_mask`` "full", the default) or keeps them (``"caption"``, LlamaGen's generate.py).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ...conditioning import Caption
from ...errors import GFTError
from ...nn import eval_mode
from ...sampling.common import (SamplingStats, autocast_dtype, check_cfg_schedule, check_sampling_args, resolve_guidance,
                                sample_from_logits, sampling_autocast)

CFG_SCHEDULES = ("constant",)


@torch.no_grad()
def sample(model, captions: Caption, *, beta=None, cfg_scale: float | None = None, cfg_schedule: str = "constant",
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           use_cache: bool = True, progress: bool = False, stats: SamplingStats | None = None) -> torch.Tensor:
    """Image codes (B, N) for ``captions`` (a :class:`~gft_tokens.conditioning.Caption` of B rows)."""
    check_sampling_args(temperature, top_k, top_p)
    check_cfg_schedule(cfg_schedule, CFG_SCHEDULES)
    if not isinstance(captions, Caption):
        raise GFTError("this is a text-to-image model: give it prompts (captions), not class ids")
    with eval_mode(model):
        device = model.tok_embeddings.weight.device
        c = model.config
        captions = captions.to(device)
        bsz = len(captions)
        beta, cfg_scale = resolve_guidance(bsz, beta, cfg_scale, model.beta_embedder is not None, device)
        cfg = cfg_scale is not None
        if cfg:
            captions = captions.cat(captions.with_dropped(torch.ones(bsz, dtype=torch.bool, device=device)))
            if beta is not None:
                beta = torch.cat([beta, torch.ones_like(beta)])
        rows = len(captions)
        n = c.block_size
        codes = torch.empty(rows, n, dtype=torch.long, device=device)
        cache = model.allocate_cache(rows, dtype=autocast_dtype(device)) if use_cache else None
        pmask = None
        for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
            with sampling_autocast(device):  # bf16 on CUDA; the logits come back as float32
                if not use_cache:
                    logits = model.next_logits(codes[:, :i], captions, beta)
                elif i == 0:
                    logits, pmask = model.prefill(captions, beta, cache)
                else:
                    logits = model.decode(codes[:, i - 1:i], cache, pmask)
            if stats is not None:
                stats.network(rows)
            if cfg:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            tok = sample_from_logits(logits, temperature, top_k, top_p, generator)
            codes[:, i] = torch.cat([tok, tok]) if cfg else tok
        if stats is not None:
            stats.images += bsz
        return codes[:bsz]
