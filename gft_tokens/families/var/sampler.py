"""Sampling for VAR-style next-scale models: one forward pass per scale, on an explicit KV cache.

Scale k's tokens are drawn all at once from the logits the model gives after the condition and scales < k; the
drawn codes are added to f̂ through the tokenizer's codebook and φ convs (the model's frozen copy) and f̂, area-
downsampled, becomes scale k+1's input. The cache (a :class:`~gft_tokens.cache.KVCache` allocated once for the
L = Σ s² tokens) holds the keys/values of every scale already run, so each scale costs one pass over its own tokens.

Guidance:

* **GFT** (``beta=β``): one pass per scale for a batch of B; β is added to the class condition (start token and
  every AdaLN) and is the same at every scale. β = 1/(1 + t) for VAR's guidance strength t.
* **CFG** (``cfg_scale=w``, LlamaGen's ``u + w·(c − u)`` like every family): converted inside to VAR's convention
  t = w − 1 — the conditional and null-class rows run together (2B) and are mixed as ``(1 + t_k)·c − t_k·u`` at
  scale k, with ``cfg_schedule="linear"`` (VAR's): t_k = t·k/(K−1), from 0 at the first scale to t at the last
  (K = number of scales; t_0 = t when K = 1), or ``"constant"``: t_k = t. The drawn codes are fed to both halves.
  ``cfg_scale=1`` is the conditional model (one pass). A β-model uses ``beta`` (default 1) for its conditional
  rows and 1 for the null rows.

``use_cache=False`` recomputes every coarser scale at each step (the reference for testing the cache, and the
"recompute" side of the benchmark).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ...errors import GFTError
from ...nn import eval_mode
from ...sampling.common import (SamplingStats, autocast_dtype, check_cfg_schedule, check_sampling_args, guided_batch,
                                sample_from_logits, sampling_autocast)
from ...tokenizers.multiscale import flatten_scales

CFG_SCHEDULES = ("linear", "constant")


def guidance_strengths(cfg: float, num_scales: int, schedule: str = "linear") -> list[float]:
    """VAR's per-scale guidance t_k: ``linear`` t·k/(K−1) (0 → t), or ``constant`` t."""
    if schedule not in CFG_SCHEDULES:
        raise GFTError(f"cfg_schedule must be one of {list(CFG_SCHEDULES)}, got {schedule!r}")
    if schedule == "constant" or num_scales == 1:
        return [float(cfg)] * num_scales
    return [cfg * k / (num_scales - 1) for k in range(num_scales)]


@torch.no_grad()
def sample(model, labels, *, beta=None, cfg_scale: float | None = None, cfg_schedule: str = "linear",
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           use_cache: bool = True, progress: bool = False, stats: SamplingStats | None = None) -> torch.Tensor:
    """Generate codes (B, L) — every scale's codes, concatenated coarse to fine — for class ``labels`` (B,).

    Args:
        beta: GFT pseudo-temperature in [0, 1], a number or a (B,) tensor (GFT models only); 1 = conditional model.
        cfg_scale: CFG scale w in LlamaGen's convention (VAR's t = w − 1; two batched passes per scale);
            1 = the conditional model, one pass.
        cfg_schedule: ``"linear"`` (VAR's ramp t·k/(K−1)) or ``"constant"``.
        temperature / top_k / top_p: applied to each token's (guided) logits; 0 / 1 disable top-k / top-p.
        stats: a :class:`~gft_tokens.sampling.common.SamplingStats` that receives this call's cost.
    """
    check_sampling_args(temperature, top_k, top_p)
    check_cfg_schedule(cfg_schedule, CFG_SCHEDULES)
    scales = model.scales
    with eval_mode(model):
        device = model.word_embed.weight.device
        labels, beta, cfg_scale, bsz = guided_batch(model, labels, beta, cfg_scale, device)
        guided = cfg_scale is not None
        strengths = guidance_strengths(cfg_scale - 1.0 if guided else 0.0, len(scales), cfg_schedule)
        rows = labels.shape[0]
        cond = model.condition(labels, beta)
        cache = model.allocate_cache(rows, dtype=autocast_dtype(device)) if use_cache else None
        maps: list[torch.Tensor] = []
        f_hat, tokens = None, model.start_tokens(cond)
        for k in tqdm(range(len(scales)), desc="scales", disable=not progress, leave=False):
            s = scales[k]
            with sampling_autocast(device):  # bf16 on CUDA; the logits come back as float32
                logits = model.scale_logits(tokens, cond, cache) if use_cache else model.recompute_logits(maps, cond)
            if stats is not None:
                stats.network(rows)
            if guided:
                c, u = logits.chunk(2)
                t = strengths[k]
                logits = (1 + t) * c - t * u
            flat = logits.reshape(-1, logits.shape[-1])
            codes = sample_from_logits(flat, temperature, top_k, top_p, generator).view(-1, s, s)
            if guided:
                codes = torch.cat([codes, codes])
            maps.append(codes)
            if use_cache and k + 1 < len(scales):
                f_hat, nxt = model.quantizer.next_input(f_hat, codes, k)
                tokens = model.scale_tokens(nxt, k + 1, k + 1)
        if stats is not None:
            stats.images += bsz
        return flatten_scales(maps)[:bsz]
