"""MAR's per-token diffusion head ("DiffLoss"); its training objective is the GFT skeleton of
:mod:`gft_tokens.objectives` with the ε-MSE plug-in (:data:`~gft_tokens.objectives.EPS_MSE`).

A continuous token x (C channels) is modelled by a small denoising MLP conditioned on the transformer's output z
for that token (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"):

* :class:`SimpleMLPAdaLN` — MAR's shape: ``input_proj`` → ``depth`` residual MLP blocks, each modulated (shift,
  scale, gate) by adaLN from ``y = time_embed(t) + cond_embed(z)`` → an adaLN final layer → ε (C channels).
  Initialised as MAR's: Xavier-uniform Linear layers with zero bias, N(0, 0.02²) timestep-MLP weights, and every
  adaLN output layer and the final projection at zero, so a fresh head predicts ε = 0.
* :class:`GaussianDiffusion` — DDPM with the cosine schedule ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), T = 1000 for
  training (ε-prediction, MSE), and the same schedule respaced to ``num_sampling_steps`` evenly spaced steps for
  sampling (ADM's ``space_timesteps``; the MLP sees the original step index).

Differences from MAR, on purpose: MAR's head also learns the reverse-process variance (ADM's ``learn_sigma`` with a
VLB term); this head predicts ε only and samples with the fixed posterior variance β̃_t (ADM's "fixed small"),
so the GFT mix below is a mix of ε predictions only — exactly the quantity CFG mixes in MAR.

GFT on ε (Chen et al. 2025, "Visual Generation Without Guidance"), for masked tokens only::

    ε_c = β · ε_s(x_t | z(c, β), t) + (1 − β) · sg(ε_u(x_t | z(∅, 1), t))          loss = ‖ε_c − ε‖²

with one (x_t, t, ε) shared by both branches, β ~ U(0, 1) per sample, the condition dropped with probability 0.1
(dropped rows get β input 1 and keep their β as mixing weight), and the unconditional branch computed by the same
network at the null class and β = 1, in eval mode without gradient — the conventions of
:func:`gft_tokens.objectives.gft_loss`. At sampling time ε_s at a chosen β is used alone (one transformer pass and
one MLP pass per denoising step) and corresponds to CFG's ``u + (1/β)·(c − u)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...errors import GFTError
from ...nn import Linear, sinusoidal_embedding


# -----------------------------------------------------------------------------------------------------------------
# Gaussian diffusion: cosine schedule, respacing, q_sample, the reverse process
# -----------------------------------------------------------------------------------------------------------------
def cosine_betas(steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999) with ᾱ(s) = cos²((s + 0.008)/1.008 · π/2) (float64)."""
    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1.0 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta)
                         for i in range(steps)], dtype=torch.float64)


def spaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps of ``range(num_timesteps)``, first and last included (ADM's single section)."""
    if not 1 <= count <= num_timesteps:
        raise GFTError(f"num_sampling_steps must lie in [1, {num_timesteps}], got {count}")
    stride = (num_timesteps - 1) / (count - 1) if count > 1 else 1.0
    return sorted({round(i * stride) for i in range(count)})


class GaussianDiffusion:
    """DDPM quantities for the steps ``timesteps`` of a base schedule ``base_betas`` (all steps by default).

    Respaced as ADM's ``SpacedDiffusion``: new β_i = 1 − ᾱ(kept_i)/ᾱ(kept_{i−1}); the model is called with the
    original step index ``timestep_map[i]``.
    """

    def __init__(self, base_betas: torch.Tensor, timesteps: list[int] | None = None):
        base_abar = torch.cumprod(1.0 - base_betas, 0)
        keep = list(range(len(base_betas))) if timesteps is None else list(timesteps)
        abar = base_abar[keep]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas = 1.0 - abar / prev
        self.timestep_map = torch.tensor(keep, dtype=torch.long)
        self.num_timesteps = len(keep)
        self.alphas_cumprod, self.alphas_cumprod_prev = abar, prev
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = abar.sqrt(), (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod = (1.0 / abar).sqrt(), (1.0 / abar - 1).sqrt()
        var = self.betas * (1.0 - prev) / (1.0 - abar)
        # log of the posterior variance, clipped: β̃_0 = 0, so step 0 takes β̃_1 (only used where noise is added)
        self.posterior_log_variance = torch.log(torch.cat([var[1:2], var[1:]])) if len(var) > 1 else torch.log(self.betas)
        self.posterior_mean_coef1 = self.betas * prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - prev) * (1.0 - self.betas).sqrt() / (1.0 - abar)

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table.to(like.device)[t].to(like.dtype)[:, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε for rows x0 (R, C), steps t (R,)."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def p_mean(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip_x0: float | None = None) -> torch.Tensor:
        """Mean of p(x_{t−1} | x_t) from an ε prediction; the implied x0 is clamped to [−clip_x0, clip_x0] when given
        (MAR: not clipped, ``clip_denoised=False``)."""
        x0 = self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        return self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t

    def sample_loop(self, eps_fn, noise: torch.Tensor, temperature: float = 1.0,
                    generator: torch.Generator | None = None, clip_x0: float | None = None) -> torch.Tensor:
        """Reverse process from x_T = ``noise`` (R, C); ``eps_fn(x, t_model)`` predicts ε with the original step
        index. As MAR's: the noise added at every step is scaled by ``temperature`` (x_T is not), none at the
        last step."""
        x = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            mean = self.p_mean(x, t, eps_fn(x, self.timestep_map.to(x.device)[t]), clip_x0)
            if i > 0:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                x = mean + torch.exp(0.5 * self._at(self.posterior_log_variance, t, x)) * z * temperature
            else:
                x = mean
        return x


# -----------------------------------------------------------------------------------------------------------------
# The denoising MLP (MAR's SimpleMLPAdaLN)
# -----------------------------------------------------------------------------------------------------------------
class XavierLinear(nn.Linear):
    """``nn.Linear`` that initialises itself as MAR's DiffLoss does: Xavier-uniform weight, zero bias (or all zero
    with ``zero_init=True``) — in its own ``reset_parameters``, so it is initialised under ZeRO-3 too."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        object.__setattr__(self, "zero_init", bool(zero_init))
        super().__init__(in_features, out_features, bias=True)

    def reset_parameters(self) -> None:
        if self.zero_init:
            nn.init.zeros_(self.weight)
        else:
            nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)


class TimestepEmbedder(nn.Module):
    """t → sinusoid(t, 256) ([cos, sin], max period 10⁴) → Linear → SiLU → Linear, weights N(0, 0.02²)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, width, bias=True, std=0.02), nn.SiLU(),
                                 Linear(width, width, bias=True, std=0.02))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """x + gate · MLP(LN(x)·(1 + scale) + shift), (shift, scale, gate) from SiLU → Linear(y) (zero-init)."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(XavierLinear(width, width), nn.SiLU(), XavierLinear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), XavierLinear(width, 3 * width, zero_init=True))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), XavierLinear(width, 2 * width, zero_init=True))
        self.linear = XavierLinear(width, out_channels, zero_init=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """ε(x_t, t, z): rows x_t (R, C), steps t (R,), conditions z (R, z_channels) → (R, C)."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = XavierLinear(z_channels, width)
        self.input_proj = XavierLinear(in_channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, in_channels)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t) + self.cond_embed(z)
        h = self.input_proj(x)
        for block in self.res_blocks:
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(block, h, y, use_reentrant=False)
            else:
                h = block(h, y)
        return self.final_layer(h, y)


class DiffusionHead(nn.Module):
    """The denoising MLP plus its two schedules: T = 1000 cosine steps for training, respaced for sampling."""

    def __init__(self, token_dim: int, z_channels: int, depth: int, width: int, num_sampling_steps: int = 100,
                 batch_mul: int = 4, train_timesteps: int = 1000):
        super().__init__()
        self.token_dim, self.batch_mul = token_dim, batch_mul
        self.net = SimpleMLPAdaLN(token_dim, width, z_channels, depth)
        base = cosine_betas(train_timesteps)
        self.train_diffusion = GaussianDiffusion(base)
        self.gen_diffusion = GaussianDiffusion(base, spaced_timesteps(train_timesteps, num_sampling_steps))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """ε predictions (R, C), float32, for rows x_t (R, C) at original steps t (R,) given z (R, D)."""
        dtype = self.net.input_proj.weight.dtype  # bf16 under a bf16 engine; x_t and ε stay float32 outside
        return self.net(x_t.to(dtype), t, z.to(dtype)).float()

    def sample(self, z: torch.Tensor, temperature: float = 1.0, cfg_scale: float | None = None,
               generator: torch.Generator | None = None, clip_x0: float | None = None) -> torch.Tensor:
        """Draw one token per row of z (R, D) → (R, C). With ``cfg_scale`` w, z holds R/2 conditional rows then R/2
        unconditional rows, both denoised from the same noise and mixed as ``u + w·(c − u)``; R/2 tokens return."""
        rows = z.shape[0] // 2 if cfg_scale is not None else z.shape[0]
        noise = torch.randn(rows, self.token_dim, generator=generator, device=z.device)
        if cfg_scale is None:
            return self.gen_diffusion.sample_loop(lambda x, t: self(x, t, z), noise, temperature, generator, clip_x0)

        def guided(x, t):
            cond, uncond = self(torch.cat([x, x]), torch.cat([t, t]), z).chunk(2)
            return uncond + cfg_scale * (cond - uncond)

        return self.gen_diffusion.sample_loop(guided, noise, temperature, generator, clip_x0)
