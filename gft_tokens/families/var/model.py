"""VAR-style next-scale prediction (Tian et al. 2024, "Visual Autoregressive Modeling"), with a β input for GFT.

The image is a pyramid of code maps s_0 = 1 < s_1 < … < s_{K-1} = g from a multi-scale tokenizer
(:class:`~gft_tokens.tokenizers.MultiScaleVQTokenizer`), laid out coarse to fine as one sequence of L = Σ s_k² tokens.
All tokens of a scale are predicted at once, from the condition and every coarser scale:

* **start token**: the condition ``cond = class_emb(c) [+ β_emb(β)]`` plus ``pos_start`` — it predicts the 1×1 scale;
* **inputs of scale k > 0**: VAR's route. The codes of scales < k are embedded with the tokenizer's codebook,
  upsampled (bicubic) to the grid, passed through the tokenizer's φ convs and summed into f̂ — exactly the
  quantizer's reconstruction so far — then f̂ is area-downsampled to s_k × s_k and projected by ``word_embed``
  (Linear(Cvae, C)). The model holds a frozen copy of those tokenizer pieces (``quantizer.*`` buffers, loaded by
  :meth:`VAR.load_quantizer`), so training, sampling and the saved checkpoint need no tokenizer object, and the
  input path (and parameter names) are VAR's, so VAR's released weights map onto this model one to one;
* **level + position embeddings**: ``lvl_embed`` (one row per scale) + a learned absolute table ``pos_1LC``;
* **block-causal attention**: a token attends to every token of its own scale and of all coarser scales, never to
  a finer one (``level(query) ≥ level(key)``); sampling runs one forward per scale on a KV cache;
* **AdaLN blocks** (LayerNorm without affine, then ``(1 + scale)·x + shift``, gated residuals): the condition
  enters every block through ``ada_lin`` (per block, or VAR's shared variant ``shared_aln``) and the head through
  ``head_nm``; attention is VAR's l2-normalised q·k with a learned per-head temperature (``attn_l2_norm``).

GFT adds ``beta_embedder`` (zero-initialised last layer) whose output is *added to the class condition*, so it
reaches the start token and every AdaLN; a model built with ``beta_embed=False`` has no β input (the CFG baseline).

Presets follow VAR's rule by depth d: width 64·d, d heads, drop-path 0.1·d/24 (``d16`` … ``d30``; ``d36-s`` is the
shared-AdaLN 512px model), plus CPU depths ``d1`` … ``d6``. Initialisation as VAR's ``init_weights`` (std √(1/3C),
output projections / √(2·depth), AdaLN gates ×1e-5, scale/shift ×0.5, head ×0.02) with normal instead of
truncated-normal draws (the truncation at ±2 is far beyond these standard deviations).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig

from ...cache import KVCache
from ...conditioning import BetaEmbedder, ClassConditional, embed_condition
from ...errors import GFTError
from ...pretrained import GFTPreTrainedModel, preset_config
from ...nn import DropPath, Embedding, Linear, OutputHead
from ...objectives import HeadInputs
from ...tokenizers.multiscale import VAR_SCALES_256, apply_phi, check_scales, downsample, flatten_scales, num_phi, phi_indices, split_scales, upsample_to_grid
from ...tokenizers.vq import check_codes

PRESETS: dict[str, dict] = {
    # VAR's released sizes (heads = depth, width = 64·depth); d36-s is the 512px shared-AdaLN model.
    "d16": dict(depth=16),
    "d20": dict(depth=20),
    "d24": dict(depth=24),
    "d30": dict(depth=30),
    "d36-s": dict(depth=36, shared_aln=True),
    # CPU depths, same rule.
    "d1": dict(depth=1),
    "d2": dict(depth=2),
    "d3": dict(depth=3),
    "d4": dict(depth=4),
    "d6": dict(depth=6),
}


class VARConfig(PretrainedConfig):
    """Configuration of :class:`VAR`. ``embed_dim`` / ``num_heads`` / ``drop_path_rate`` default to VAR's rule by depth.

    ``scales``, ``vocab_size``, ``cvae`` (codebook vector width), ``quant_resi`` and ``share_quant_resi`` describe
    the multi-scale tokenizer whose quantizer builds the inputs; the training loop fills them from the tokenizer.
    """

    model_type = "gft_var"

    def __init__(
        self,
        depth: int = 16,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        norm_eps: float = 1e-6,
        shared_aln: bool = False,
        attn_l2_norm: bool = True,
        init_adaln: float = 0.5,
        init_adaln_gamma: float = 1e-5,
        init_head: float = 0.02,
        init_std: float = -1.0,
        num_classes: int = 1000,
        vocab_size: int = 4096,
        scales: list[int] | tuple[int, ...] = VAR_SCALES_256,
        cvae: int = 32,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        beta_embed: bool = True,
        beta_freq_dim: int = 256,
        preset: str | None = None,
        tokenizer: dict | None = None,
        dataset: dict | None = None,
        **kwargs,
    ):
        self.depth = int(depth)
        self.embed_dim = int(embed_dim) if embed_dim is not None else 64 * self.depth
        self.num_heads = int(num_heads) if num_heads is not None else self.depth
        self.mlp_ratio = float(mlp_ratio)
        self.drop_rate, self.attn_drop_rate = float(drop_rate), float(attn_drop_rate)
        self.drop_path_rate = float(drop_path_rate) if drop_path_rate is not None else 0.1 * self.depth / 24
        self.norm_eps = float(norm_eps)
        self.shared_aln, self.attn_l2_norm = bool(shared_aln), bool(attn_l2_norm)
        self.init_adaln, self.init_adaln_gamma = float(init_adaln), float(init_adaln_gamma)
        self.init_head, self.init_std = float(init_head), float(init_std)
        self.num_classes, self.vocab_size = int(num_classes), int(vocab_size)
        self.scales = list(scales) if isinstance(scales, (list, tuple)) else scales
        self.cvae, self.quant_resi, self.share_quant_resi = int(cvae), float(quant_resi), int(share_quant_resi)
        self.beta_embed, self.beta_freq_dim = bool(beta_embed), int(beta_freq_dim)
        self.preset = preset
        self.tokenizer = tokenizer  # what the model was trained with (type, codebook_size, grid_size, scales, ...)
        self.dataset = dataset  # what it was trained on: {name, class_names} (None: unknown)
        super().__init__(**kwargs)
        if self.depth < 1:
            raise GFTError(f"depth must be ≥ 1, got {self.depth}")
        if self.embed_dim % self.num_heads:
            raise GFTError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        self.scales = check_scales(self.scales, where="VAR scales")
        if self.share_quant_resi < 0:
            raise GFTError(f"share_quant_resi must be ≥ 0, got {self.share_quant_resi}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        """L = Σ s², the tokens of one image over all scales."""
        return sum(s * s for s in self.scales)

    @property
    def grid_size(self) -> int:
        return self.scales[-1]

    @property
    def std(self) -> float:
        return self.init_std if self.init_std >= 0 else math.sqrt(1 / self.embed_dim / 3)


def var_config(preset: str, **overrides) -> VARConfig:
    """A :class:`VARConfig` from a preset name plus overrides (``vocab_size``, ``scales`` …)."""
    return preset_config(VARConfig, PRESETS, preset, "VAR preset", overrides)


def scale_bounds(scales) -> list[tuple[int, int]]:
    """(start, end) of each scale's tokens in the flat sequence."""
    out, start = [], 0
    for s in scales:
        out.append((start, start + s * s))
        start += s * s
    return out


class AdaLinear(Linear):
    """The AdaLN projection ``Linear(D, k·C)`` with VAR's row-block init: rows [0, gate_rows) (the gates) at
    std·``gate_mult``, the rest (scales, shifts) at std·``mult``; bias 0."""

    def __init__(self, in_features, out_features, std, mult, gate_rows=0, gate_mult=1.0):
        object.__setattr__(self, "row_init", (float(mult), int(gate_rows), float(gate_mult)))
        super().__init__(in_features, out_features, bias=True, std=std)

    def reset_parameters(self) -> None:
        mult, gate_rows, gate_mult = self.row_init
        with torch.no_grad():
            nn.init.normal_(self.weight, std=self.init_std)
            self.weight[gate_rows:].mul_(mult)
            self.weight[:gate_rows].mul_(gate_mult)
            nn.init.zeros_(self.bias)


class QuantizerInputs(nn.Module):
    """Frozen copy of the multi-scale tokenizer's f̂ path: codebook (V, Cvae) and φ convs (buffers, not trained)."""

    def __init__(self, config: VARConfig):
        super().__init__()
        c = config
        self.scales, self.ratio = list(c.scales), c.quant_resi
        self.phi_of_scale = phi_indices(len(c.scales), c.share_quant_resi)
        n = num_phi(len(c.scales), c.share_quant_resi, c.quant_resi)
        self.register_buffer("embedding", torch.zeros(c.vocab_size, c.cvae))
        self.register_buffer("resi_weight", torch.zeros(n, c.cvae, c.cvae, 3, 3))
        self.register_buffer("resi_bias", torch.zeros(n, c.cvae))
        self.register_buffer("loaded", torch.zeros((), dtype=torch.bool))

    def load(self, state: dict) -> None:
        for name in ("embedding", "resi_weight", "resi_bias"):
            src = state.get(name)
            mine = getattr(self, name)
            shape = tuple(src.shape) if src is not None else (0, *mine.shape[1:])
            if shape != tuple(mine.shape):
                raise GFTError(f"the tokenizer's quantizer does not fit this VAR model: {name} has shape {shape}, "
                               f"the model expects {tuple(mine.shape)} (codebook size, Cvae, scales, φ convs)")
            if src is not None:
                mine.copy_(src)
        self.loaded.fill_(True)

    def contribution(self, codes: torch.Tensor, scale_index: int) -> torch.Tensor:
        """φ_k(upsample(codebook[codes])): (B, s, s) → (B, Cvae, g, g), as the tokenizer computes it."""
        z = self.embedding[codes].permute(0, 3, 1, 2)
        h = upsample_to_grid(z.to(self.embedding.dtype), self.scales[-1])
        if not len(self.resi_weight):
            return h
        i = self.phi_of_scale[scale_index]
        return apply_phi(h, self.resi_weight[i], self.resi_bias[i], self.ratio)

    def next_input(self, f_hat: torch.Tensor, codes: torch.Tensor, scale_index: int):
        """Add scale ``scale_index``'s codes to f̂; return (f̂, the next scale's inputs (B, s_{k+1}², Cvae))."""
        f_hat = self.contribution(codes, scale_index) if f_hat is None else f_hat + self.contribution(codes, scale_index)
        nxt = downsample(f_hat, self.scales[scale_index + 1])
        return f_hat, nxt.flatten(2).transpose(1, 2)


class ScalePositions(nn.Module):
    """Start-token position, learned absolute positions of the whole pyramid, and the level (scale) embedding."""

    def __init__(self, config: VARConfig):
        super().__init__()
        c, std = config, config.std
        self.bounds = scale_bounds(c.scales)
        self.pos_start = nn.Parameter(torch.randn(1, c.scales[0] ** 2, c.embed_dim) * std)
        self.pos_1LC = nn.Parameter(torch.randn(1, c.num_tokens, c.embed_dim) * std)
        self.lvl_embed = Embedding(len(c.scales), c.embed_dim, std=std)
        lvl = torch.cat([torch.full((s * s,), k) for k, s in enumerate(c.scales)])
        self.register_buffer("lvl_1L", lvl, persistent=False)

    def forward(self, first: int, last: int, start_token: bool = False) -> torch.Tensor:
        """Level + position embedding of scales first..last (inclusive): (1, T, C); plus ``pos_start`` for the
        start token (``start_token=True``, scale 0 only)."""
        start, end = self.bounds[first][0], self.bounds[last][1]
        emb = self.lvl_embed(self.lvl_1L[start:end])[None] + self.pos_1LC[:, start:end]
        return self.pos_start + emb if start_token else emb


class SelfAttention(nn.Module):
    def __init__(self, config: VARConfig, layer_idx: int):
        super().__init__()
        c, std = config, config.std
        self.layer_idx, self.num_heads, self.head_dim = layer_idx, c.num_heads, c.head_dim
        self.mat_qkv = Linear(c.embed_dim, 3 * c.embed_dim, bias=False, std=std)
        self.q_bias = nn.Parameter(torch.zeros(c.embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(c.embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(c.embed_dim), persistent=False)
        self.l2_norm = c.attn_l2_norm
        if self.l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, c.num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(c.head_dim)
        self.proj = Linear(c.embed_dim, c.embed_dim, bias=True, std=std / math.sqrt(2 * c.depth))
        self.proj_drop = nn.Dropout(c.drop_rate)
        self.attn_drop = c.attn_drop_rate

    def forward(self, x, mask: torch.Tensor | None, cache: KVCache | None):
        b, t, c = x.shape
        qkv = self.mat_qkv(x) + torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        q, k, v = qkv.view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, t, c)))


class FFN(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        c, std = config, config.std
        hidden = round(c.embed_dim * c.mlp_ratio)
        self.fc1 = Linear(c.embed_dim, hidden, bias=True, std=std)
        self.fc2 = Linear(hidden, c.embed_dim, bias=True, std=std / math.sqrt(2 * c.depth))
        self.drop = nn.Dropout(c.drop_rate)

    def forward(self, x):
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class AdaLNSelfAttn(nn.Module):
    """x += γ₁·Attn(LN(x)(1+scale₁)+shift₁); x += γ₂·FFN(LN(x)(1+scale₂)+shift₂), the six vectors from the condition."""

    def __init__(self, config: VARConfig, layer_idx: int, drop_path: float):
        super().__init__()
        c, C = config, config.embed_dim
        self.embed_dim = C
        self.attn = SelfAttention(c, layer_idx)
        self.ffn = FFN(c)
        self.ln_wo_grad = nn.LayerNorm(C, eps=c.norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(drop_path)
        self.shared_aln = c.shared_aln
        if c.shared_aln:
            gss = torch.randn(1, 1, 6, C) / math.sqrt(C)
            gss[:, :, 2:] *= c.init_adaln
            gss[:, :, :2] *= c.init_adaln_gamma
            self.ada_gss = nn.Parameter(gss)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), AdaLinear(C, 6 * C, c.std, c.init_adaln, 2 * C, c.init_adaln_gamma))

    def forward(self, x, cond, mask=None, cache=None):
        """``cond``: (B, D) condition, or with ``shared_aln`` the shared projection (B, 1, 6, C)."""
        if self.shared_aln:
            ada = (self.ada_gss + cond).unbind(2)
        else:
            ada = self.ada_lin(cond).view(-1, 1, 6, self.embed_dim).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada
        x = x + self.drop_path(self.attn(self.ln_wo_grad(x) * (1 + scale1) + shift1, mask, cache) * gamma1)
        return x + self.drop_path(self.ffn(self.ln_wo_grad(x) * (1 + scale2) + shift2) * gamma2)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        C = config.embed_dim
        self.embed_dim = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=config.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), AdaLinear(C, 2 * C, config.std, config.init_adaln))

    def forward(self, x, cond):
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.embed_dim).unbind(2)
        return self.ln_wo_grad(x) * (1 + scale) + shift


class VAR(ClassConditional, GFTPreTrainedModel):
    config_class = VARConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["AdaLNSelfAttn"]

    def __init__(self, config: VARConfig):
        super().__init__(config)
        c, C, std = config, config.embed_dim, config.std
        self.bounds = scale_bounds(c.scales)
        self.quantizer = QuantizerInputs(c)
        self.word_embed = Linear(c.cvae, C, bias=True, std=std)
        self.class_emb = Embedding(c.num_classes + 1, C, std=std)  # row num_classes = the null class
        self.beta_embedder = BetaEmbedder(C, c.beta_freq_dim, std=std) if c.beta_embed else None
        self.pos = ScalePositions(c)
        if c.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), AdaLinear(C, 6 * C, std, 1.0))
        else:
            self.shared_ada_lin = None
        rates = [c.drop_path_rate * i / max(1, c.depth - 1) for i in range(c.depth)]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList([AdaLNSelfAttn(c, i, rates[i]) for i in range(c.depth)])
        self.head_nm = AdaLNBeforeHead(c)
        self.head = OutputHead(C, c.vocab_size, bias=True, std=std * c.init_head)
        level = torch.cat([torch.full((s * s,), k) for k, s in enumerate(c.scales)])
        self.register_buffer("attn_mask", level[:, None] >= level[None, :], persistent=False)  # block-causal
        self.gradient_checkpointing = False
        self.post_init()

    # -- conditioning ------------------------------------------------------------------------------------------
    @property
    def scales(self) -> list[int]:
        return list(self.config.scales)

    def condition(self, labels: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """``class_emb(c)`` (+ β embedding): (B, C) — the start token and the AdaLN condition of every block."""
        return embed_condition(self.class_emb, self.num_classes, self.beta_embedder, labels, beta, guidance="cfg")

    def load_quantizer(self, source) -> None:
        """Copy the f̂ path (codebook, φ convs) from a multi-scale tokenizer or its ``quantizer_state()`` dict."""
        state = source.quantizer_state() if hasattr(source, "quantizer_state") else source
        if not isinstance(state, dict):
            raise GFTError(f"load_quantizer needs a multi-scale tokenizer, got {type(source).__name__}")
        with torch.no_grad():
            self.quantizer.load(state)

    def no_weight_decay(self) -> list[str]:
        """Parameters VAR trains without weight decay (besides biases and norms): its ``filter_params`` list."""
        keys = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss")
        return [n for n, _ in self.named_parameters() if any(k in n for k in keys)]

    # -- backbone ----------------------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if not bool(self.quantizer.loaded):
            raise GFTError("this VAR model has no quantizer inputs yet: call model.load_quantizer(tokenizer) with "
                           "its multi-scale tokenizer (the training loop does this)")

    def _ada_condition(self, cond: torch.Tensor) -> torch.Tensor:
        if self.shared_ada_lin is None:
            return cond
        return self.shared_ada_lin(cond).view(-1, 1, 6, self.config.embed_dim)

    def _blocks(self, x, cond, mask, cache: KVCache | None) -> torch.Tensor:
        ada = self._ada_condition(cond)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, ada, mask, None, use_reentrant=False)
            else:
                x = block(x, ada, mask, cache)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.head_nm(x, cond)

    def start_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """The first scale's input: the condition + ``pos_start`` + its level/position embedding."""
        return cond[:, None, :] + self.pos(0, 0, start_token=True)

    def scale_tokens(self, inputs: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Inputs (B, T, Cvae) of scales first..last → token embeddings (B, T, C)."""
        return self.word_embed(inputs) + self.pos(first, last)

    def teacher_inputs(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale codes of scales 0..m-1 → the inputs (B, Σ_{k=1..m} s_k², Cvae) of scales 1..m (f̂ route)."""
        f_hat, xs = None, []
        for k, codes in enumerate(maps):
            f_hat, nxt = self.quantizer.next_input(f_hat, codes, k)
            xs.append(nxt)
        return torch.cat(xs, dim=1)

    def _hidden(self, maps: list[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """Hidden states (after head_nm) of scales 0..len(maps) given the codes of scales 0..len(maps)-1."""
        self._check_ready()
        n = len(maps)
        x = self.start_tokens(cond)
        if n:
            x = torch.cat([x, self.scale_tokens(self.teacher_inputs(maps), 1, n)], dim=1)
        end = self.bounds[n][1]
        return self._blocks(x, cond, self.attn_mask[:end, :end], None)

    def split_codes(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Flat codes (B, L) → validated per-scale maps on the model's device."""
        codes = check_codes(codes, self.config.vocab_size, ndim=2)
        maps = split_scales(codes, self.config.scales)
        return [m.to(self.word_embed.weight.device) for m in maps]

    def _teacher_forced_hidden(self, codes, labels, beta) -> torch.Tensor:
        maps = self.split_codes(codes)
        return self._hidden(maps[:-1], self.condition(labels, beta))

    def forward(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: codes (B, L) (scales concatenated) + labels (B,) [+ β (B,)] → logits (B, L, V), fp32."""
        return self.head(self._teacher_forced_hidden(codes, cond, beta)).float()

    def head_inputs(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None) -> HeadInputs:
        """As :meth:`forward` but returns the final hidden states + output projection (for the fused loss)."""
        return HeadInputs(self._teacher_forced_hidden(codes, cond, beta), self.head)

    # -- sampling ----------------------------------------------------------------------------------------------
    def allocate_cache(self, batch: int, dtype=None, device=None) -> KVCache:
        c, w = self.config, self.word_embed.weight
        return KVCache.allocate(c.depth, batch, c.num_heads, c.num_tokens, c.head_dim,
                                dtype=dtype or w.dtype, device=device or w.device)

    def scale_logits(self, tokens: torch.Tensor, cond: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One scale's token embeddings (B, s², C) after the cached coarser scales → its logits (B, s², V), fp32."""
        self._check_ready()
        return self.head(self._blocks(tokens, cond, None, cache)).float()

    def recompute_logits(self, maps: list[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """No cache: recompute every scale up to scale ``len(maps)`` and return that scale's logits (B, s², V)."""
        start, end = self.bounds[len(maps)]
        return self.head(self._hidden(maps, cond)[:, start:end]).float()


__all__ = ["PRESETS", "VAR", "VARConfig", "flatten_scales", "scale_bounds", "var_config"]
