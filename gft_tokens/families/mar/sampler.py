"""MAR's iterative decoding of continuous tokens: random order, cosine schedule, a diffusion draw per token.

Every token starts masked, and each sample gets a random generation order fixed at the start. Step s of S runs the
transformer once on the current tokens and leaves ``floor(N·cos(π/2·(s+1)/S))`` tokens masked (the masked family's
schedule and clamps, :func:`gft_tokens.families.masked.sampler.masked_after_step`); the next tokens of the order are drawn,
each by the diffusion head's reverse process conditioned on its z (``num_sampling_steps`` respaced DDPM steps;
``temperature`` scales the noise added at every reverse step, as MAR's). A drawn token is never changed again.

GFT mode (``beta=...``): one transformer pass per step for a batch of B, and one MLP pass per denoising step for the
drawn tokens. CFG mode (``cfg_scale=w``): conditional and unconditional rows run together as one batch of 2B, and
the head mixes ε as ``u + w_s·(c − u)`` (both rows denoised from the same noise, as MAR's ``forward_with_cfg``),
w_s = w (``cfg_schedule="constant"``) or MAR's ``"linear"`` ramp ``1 + (w − 1)·(N − masked after step s)/N``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ...errors import GFTError
from ...nn import eval_mode
from ...sampling.common import SamplingStats, guided_batch, sampling_autocast
from ..masked.sampler import CFG_SCHEDULES, check_steps, decoding_steps, guidance_scale


def check_mar_sampling_args(steps, cfg_schedule: str, temperature: float, top_k: int, top_p: float,
                            seq_len: int) -> None:
    check_steps(steps, seq_len)
    if cfg_schedule not in CFG_SCHEDULES:
        raise GFTError(f"cfg_schedule must be one of {list(CFG_SCHEDULES)}, got {cfg_schedule!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise GFTError(f"temperature must be a finite number ≥ 0, got {temperature}")
    if top_k or top_p != 1.0:
        raise GFTError("top_k / top_p filter a categorical distribution; continuous tokens have none (use "
                       "temperature)")


@torch.no_grad()
def sample(model, labels, *, beta=None, cfg_scale: float | None = None, cfg_schedule: str = "constant",
           steps: int = 16, temperature: float = 1.0, clip_x0: float | None = None, top_k: int = 0,
           top_p: float = 1.0, generator: torch.Generator | None = None, progress: bool = False,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
           stats: SamplingStats | None = None) -> torch.Tensor:
    """Generate continuous tokens (B, N, C) for class ``labels`` (B,).

    Args:
        beta: GFT pseudo-temperature in [0, 1], a number or a (B,) tensor (β = 1/w for CFG scale w). Requires a
            model trained with GFT.
        cfg_scale: classifier-free guidance scale w (conditional + unconditional rows batched as 2B). With a GFT
            model, β applies to the conditional rows.
        cfg_schedule: ``"constant"`` (w every step; what a fixed β corresponds to) or ``"linear"`` (MAR's ramp).
        steps: decoding steps, 1 … N (N steps draw one token per step).
        temperature: scale of the noise added at each reverse diffusion step (MAR: 1.0, or 0.95 without CFG).
        clip_x0: clamp the x0 implied by each ε prediction to [−clip_x0, clip_x0] (latents are normalised to unit
            std). MAR does not clip (None); a briefly trained head's ε errors at the first, near-pure-noise steps
            are amplified ~1/√α_t there, and clipping keeps them from running away.
        callback: called after every step as ``callback(step, tokens, mask)`` (copies; mask True = still masked).
        stats: a :class:`~gft_tokens.sampling.common.SamplingStats` that receives this call's cost (transformer
            rows, and the diffusion head's rows apart).
    """
    n, dim = model.config.seq_len, model.config.token_dim
    check_mar_sampling_args(steps, cfg_schedule, temperature, top_k, top_p, n)
    if clip_x0 is not None and not (isinstance(clip_x0, (int, float)) and math.isfinite(clip_x0) and clip_x0 > 0):
        raise GFTError(f"clip_x0 must be a positive finite number (or None: no clipping), got {clip_x0!r}")
    with eval_mode(model):
        device = model.z_proj.weight.device
        labels, beta, cfg_scale, bsz = guided_batch(model, labels, beta, cfg_scale, device)
        cfg = cfg_scale is not None
        tokens = torch.zeros(bsz, n, dim, device=device)
        mask = torch.ones(bsz, n, dtype=torch.bool, device=device)
        order = torch.rand(bsz, n, generator=generator, device=device).argsort(dim=1)  # first entries drawn last
        rows = (lambda t: torch.cat([t, t])) if cfg else (lambda t: t)

        for step, remaining, after in decoding_steps(steps, n, progress, callback, (tokens, mask)):
            if after < remaining:
                positions = order[:, after:remaining].sort(dim=1).values  # (B, K), ascending: MAR's row order
                with sampling_autocast(device):  # bf16 on CUDA: the transformer; the diffusion head below in fp32
                    z = model.z_at(rows(tokens), labels, beta, rows(mask), rows(positions)).float()  # (B or 2B, K, D)
                if stats is not None:
                    stats.network(labels.shape[0])
                    # every denoising step runs the head on all of z's rows (both CFG halves)
                    stats.head_rows += z.shape[0] * z.shape[1] * model.diffloss.gen_diffusion.num_timesteps
                # MAR's ramp reads its clamped mask_len, which is 1 (not 0) at the last step
                w = guidance_scale(cfg_scale, cfg_schedule, n, max(after, 1)) if cfg else None
                k = positions.shape[1]
                # (B·K, D) rows; with CFG the B·K conditional rows then the B·K unconditional ones
                drawn = model.diffloss.sample(z.flatten(0, 1), temperature, cfg_scale=w, generator=generator,
                                              clip_x0=clip_x0)
                drawn = drawn.view(bsz, k, dim)
                tokens.scatter_(1, positions[..., None].expand(-1, -1, dim), drawn.to(tokens.dtype))
                mask.scatter_(1, positions, False)
        if stats is not None:
            stats.images += bsz
        return tokens
