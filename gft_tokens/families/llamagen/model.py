"""LlamaGen-style class-conditional autoregressive transformer, with a β input for GFT.

Architecture as LlamaGen's c2i GPT: a class token (``cls_token_num`` copies of the class embedding; the null class
is row ``num_classes``; see ``class_token_layout`` below) followed by the image tokens in raster order; pre-norm
blocks with RMSNorm, fused-qkv
attention with LlamaGen's 2D RoPE over the token grid, a SwiGLU FFN (hidden = 8d/3 rounded up to a multiple of
256), no biases, and an untied, zero-initialised output head. Parameter names follow the official checkpoints
(``tok_embeddings``, ``layers.N.attention.wqkv`` …) so they import one-to-one.

``class_token_layout`` says what ``cls_token_num`` k > 1 means (k = 1: both layouts are the same network):

* ``"repeat"`` (default; every model trained here before the option existed): the class vector is repeated over k
  positions 0 … k-1 (the 2D-RoPE rows of the class positions are zero), image token j sits at position k + j and
  reads grid row j; position k-1+i predicts image token i.
* ``"official"``: FoundationVision/LlamaGen's c2i network at inference (``generate.py``: the c2i prefix is one
  position). Its LabelEmbedder returns one vector (B, 1, D), so ``[:, :cls_token_num]`` keeps that single vector;
  its RoPE table still has k zero rows before the grid rows. The class vector sits at position 0 and image token j
  at position 1 + j, reading row 1 + j: tokens 0 … k-2 read zero rows (their q and k are zeroed, as the class
  position's), token j ≥ k-1 reads grid position j - (k-1). Training uses that same network: position i predicts
  image token i, all N logits. (The official training forward keeps logits from position k-1 on, k-1 fewer than its
  targets, so only its inference path is well-defined; that is what is reproduced, and what importing such a
  checkpoint needs.)

GFT adds ``beta_embedder`` (sinusoid of β·1000 → MLP with zero-initialised last layer) whose output is added to the
class token embedding. A model built with ``beta_embed=False`` is a plain CFG model (no β input).

Training uses :meth:`LlamaGen.forward` (teacher forcing, logits for every image token) or :meth:`head_inputs`
(the same, as hidden states + head for the fused loss); sampling uses :meth:`prefill` and :meth:`decode` with an
explicit :class:`~gft_tokens.cache.KVCache`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig

from ...cache import KVCache
from ...conditioning import BetaEmbedder, ClassConditional, ClassEmbedder, embed_condition
from ...errors import GFTError
from ...pretrained import GFTPreTrainedModel, preset_config
from ...nn import (DropPath, Embedding, Linear, OutputHead, RMSNorm, SwiGLU, apply_rope_table, rope_2d_table,
                   swiglu_hidden_dim)
from ...objectives import HeadInputs
from ...tokenizers.vq import check_codes

_NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)

# Official LlamaGen sizes (FoundationVision/LlamaGen, autoregressive/models/gpt.py) and small CPU sizes.
PRESETS: dict[str, dict] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-XXXL": dict(n_layer=48, n_head=40, dim=2560),
    "GPT-1B": dict(n_layer=22, n_head=32, dim=2048),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
    "GPT-7B": dict(n_layer=32, n_head=32, dim=4096),
    # CPU sizes: LlamaGen's shape at a few million parameters, without dropout (their runs are short).
    "GPT-nano": dict(n_layer=2, n_head=2, dim=64, multiple_of=32, **_NO_DROPOUT),
    "GPT-tiny": dict(n_layer=4, n_head=4, dim=128, multiple_of=64, **_NO_DROPOUT),
    "GPT-small": dict(n_layer=6, n_head=6, dim=192, multiple_of=64, **_NO_DROPOUT),
}


CLASS_TOKEN_LAYOUTS = ("repeat", "official")


class LlamaGenConfig(PretrainedConfig):
    model_type = "gft_llamagen"

    def __init__(
        self,
        dim: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_kv_head: int | None = None,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        token_dropout_p: float = 0.1,
        attn_dropout_p: float = 0.0,
        resid_dropout_p: float = 0.1,
        ffn_dropout_p: float = 0.1,
        drop_path_rate: float = 0.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        vocab_size: int = 16384,
        grid_size: int = 16,
        cls_token_num: int = 1,
        class_token_layout: str = "repeat",
        beta_embed: bool = True,
        beta_freq_dim: int = 256,
        preset: str | None = None,
        tokenizer: dict | None = None,
        dataset: dict | None = None,
        **kwargs,
    ):
        self.dim, self.n_layer, self.n_head = int(dim), int(n_layer), int(n_head)
        self.n_kv_head = int(n_kv_head) if n_kv_head is not None else None
        self.multiple_of, self.ffn_dim_multiplier = int(multiple_of), ffn_dim_multiplier
        self.rope_base, self.norm_eps, self.initializer_range = float(rope_base), float(norm_eps), float(initializer_range)
        self.token_dropout_p, self.attn_dropout_p = float(token_dropout_p), float(attn_dropout_p)
        self.resid_dropout_p, self.ffn_dropout_p = float(resid_dropout_p), float(ffn_dropout_p)
        self.drop_path_rate = float(drop_path_rate)
        self.num_classes, self.class_dropout_prob = int(num_classes), float(class_dropout_prob)
        self.vocab_size, self.grid_size, self.cls_token_num = int(vocab_size), int(grid_size), int(cls_token_num)
        self.class_token_layout = class_token_layout  # "repeat" | "official" (configs without it: "repeat")
        self.beta_embed, self.beta_freq_dim = bool(beta_embed), int(beta_freq_dim)
        self.preset = preset
        self.tokenizer = tokenizer  # what the model was trained with (type, codebook_size, grid_size, ...)
        self.dataset = dataset  # what it was trained on: {name, class_names} (None: unknown)
        super().__init__(**kwargs)
        if self.dim % self.n_head:
            raise GFTError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise GFTError(f"head dim {self.dim // self.n_head} must be divisible by 4 for 2D RoPE")
        if self.class_token_layout not in CLASS_TOKEN_LAYOUTS:
            raise GFTError(f"class_token_layout must be one of {', '.join(map(repr, CLASS_TOKEN_LAYOUTS))}, got "
                           f"{self.class_token_layout!r}")
        if self.cls_token_num < 1:
            raise GFTError(f"cls_token_num must be ≥ 1, got {self.cls_token_num}")
        if self.n_head % (self.n_kv_head or self.n_head):
            raise GFTError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def block_size(self) -> int:
        """Number of image tokens."""
        return self.grid_size * self.grid_size

    @property
    def prefix_len(self) -> int:
        """Condition positions before the first image token: ``cls_token_num`` (repeat layout) or 1 (official)."""
        return 1 if self.class_token_layout == "official" else self.cls_token_num

    @property
    def max_seq_len(self) -> int:
        return self.prefix_len + self.block_size


def llamagen_config(preset: str, **overrides) -> LlamaGenConfig:
    """A :class:`LlamaGenConfig` from a preset name plus overrides (``vocab_size``, ``grid_size`` …)."""
    return preset_config(LlamaGenConfig, PRESETS, preset, "LlamaGen preset", overrides, strict=True)


class Attention(nn.Module):
    def __init__(self, config: LlamaGenConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head or c.n_head, c.head_dim
        std = c.initializer_range
        self.wqkv = Linear(c.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, std=std)
        self.wo = Linear(c.dim, c.dim, std=std)
        self.attn_dropout_p = c.attn_dropout_p
        self.resid_dropout = nn.Dropout(c.resid_dropout_p)

    def forward(self, x, rope, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                pos: torch.Tensor | None = None):
        """``rope``: the rotation table of x's positions (:func:`~gft_tokens.nn.apply_rope_table`). ``attn_mask``:
        (B, 1, T, S) bool over all keys so far (t2i: causal + caption padding); None = causal. ``pos`` (T,) tensor:
        the static-shape decode step — k/v are written at ``pos`` and ``attn_mask`` covers the whole cache."""
        bsz, t, _ = x.shape
        nq, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.wqkv(x)
        # queries and keys rotated in one call (same positions), values split off untouched
        qk = apply_rope_table(qkv[..., :(nq + nkv) * hd].view(bsz, t, nq + nkv, hd), rope).transpose(1, 2)
        q, k = qk[:, :nq], qk[:, nq:]
        v = qkv[..., (nq + nkv) * hd:].view(bsz, t, nkv, hd).transpose(1, 2)
        mask, causal = attn_mask, attn_mask is None and t > 1
        if pos is not None:
            k, v = cache.write_at(self.layer_idx, pos, k, v)
        elif cache is not None:
            start = cache.length
            k, v = cache.update(self.layer_idx, k, v)
            if attn_mask is None and start > 0 and t > 1:  # a chunk after a cached prefix: causal in the chunk
                pos_q = torch.arange(start, start + t, device=x.device)[:, None]
                mask, causal = torch.arange(start + t, device=x.device)[None, :] <= pos_q, False
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=causal,
            dropout_p=self.attn_dropout_p if self.training else 0.0, enable_gqa=nkv != nq,
        )
        out = self.wo(out.transpose(1, 2).reshape(bsz, t, -1))
        return self.resid_dropout(out) if self.training else out


class Block(nn.Module):
    def __init__(self, config: LlamaGenConfig, layer_idx: int, drop_path: float):
        super().__init__()
        c = config
        self.attention = Attention(c, layer_idx)
        hidden = swiglu_hidden_dim(c.dim, c.multiple_of, c.ffn_dim_multiplier)
        self.feed_forward = SwiGLU(c.dim, hidden, dropout=c.ffn_dropout_p, std=c.initializer_range)
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, rope, cache=None, attn_mask=None, pos=None):
        if not self.training:  # inference: no dropout / drop-path module calls (they are identities here)
            h = x + self.attention(self.attention_norm(x), rope, cache, attn_mask, pos)
            return h + self.feed_forward(self.ffn_norm(h))
        h = x + self.drop_path(self.attention(self.attention_norm(x), rope, cache, attn_mask, pos))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class LlamaGen(ClassConditional, GFTPreTrainedModel):
    config_class = LlamaGenConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    def __init__(self, config: LlamaGenConfig):
        super().__init__(config)
        c = config
        std = c.initializer_range
        self.cls_embedding = ClassEmbedder(c.num_classes, c.dim, std=std)
        self.tok_embeddings = Embedding(c.vocab_size, c.dim, std=std)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        rates = [c.drop_path_rate * i / max(1, c.n_layer - 1) for i in range(c.n_layer)]  # as linspace(0, rate, n)
        self.layers = nn.ModuleList([Block(c, i, rates[i]) for i in range(c.n_layer)])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = OutputHead(c.dim, c.vocab_size, zero_init=True)
        self.beta_embedder = BetaEmbedder(c.dim, c.beta_freq_dim, std=std) if c.beta_embed else None
        # cls_token_num zero rows, then the grid rows, in both layouts: position p reads row p
        cos, sin = rope_2d_table(c.grid_size, c.head_dim, c.rope_base, c.cls_token_num)
        # (max_seq_len, head_dim/2, 2) = (cos, sin) per position and pair; eager steps read it as a complex view
        # (a real buffer: Module.to(dtype) would drop the imaginary part of a complex one)
        self.register_buffer("rope_table", torch.stack([cos, sin], dim=-1), persistent=False)
        self.gradient_checkpointing = False
        self.post_init()

    # -- conditioning ------------------------------------------------------------------------------------------
    def condition_tokens(self, labels: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """Class embedding (+ β embedding) over the prefix: (B, prefix_len, D) — repeated ``cls_token_num`` times
        (repeat layout) or the single vector (official layout)."""
        h = embed_condition(self.cls_embedding, self.num_classes, self.beta_embedder, labels, beta)
        return h[:, None, :].expand(-1, self.config.prefix_len, -1)

    # -- backbone ----------------------------------------------------------------------------------------------
    def _run_layers(self, h: torch.Tensor, start: int, cache: KVCache | None,
                    attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        t = h.shape[1]
        if start + t > self.config.max_seq_len:
            raise GFTError(f"sequence of {start + t} positions exceeds the model's {self.config.max_seq_len}")
        rope = torch.view_as_complex(self.rope_table[start:start + t].float())
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                h = torch.utils.checkpoint.checkpoint(layer, h, rope, None, attn_mask, use_reentrant=False)
            else:
                h = layer(h, rope, cache, attn_mask)
        if cache is not None:
            cache.advance(t)
        return self.norm(h)

    def _teacher_forced_hidden(self, codes, labels, beta) -> torch.Tensor:
        c = self.config
        codes = check_codes(codes, c.vocab_size, ndim=2)
        if codes.shape[1] != c.block_size:
            raise GFTError(f"expected {c.block_size} image tokens ({c.grid_size}x{c.grid_size} grid), got {codes.shape[1]}")
        cond = self.condition_tokens(labels, beta)
        x = torch.cat([cond, self.tok_embeddings(codes[:, :-1].to(cond.device))], dim=1)
        h = self._run_layers(self.tok_dropout(x), 0, None)
        return h[:, c.prefix_len - 1:]  # position prefix_len - 1 + i predicts image token i

    def forward(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: codes (B, N) + labels (B,) [+ β (B,)] → logits (B, N, V), float32."""
        return self.output(self._teacher_forced_hidden(codes, cond, beta)).float()

    def head_inputs(self, codes: torch.Tensor, cond: torch.Tensor, beta: torch.Tensor | None = None) -> HeadInputs:
        """As :meth:`forward` but returns final hidden states + output projection (for the fused loss)."""
        return HeadInputs(self._teacher_forced_hidden(codes, cond, beta), self.output)

    # -- sampling ----------------------------------------------------------------------------------------------
    def allocate_cache(self, batch: int, dtype=None, device=None) -> KVCache:
        c = self.config
        w = self.tok_embeddings.weight
        return KVCache.allocate(c.n_layer, batch, c.n_kv_head or c.n_head, c.max_seq_len, c.head_dim,
                                dtype=dtype or w.dtype, device=device or w.device)

    def prefill(self, labels: torch.Tensor, beta: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        """Condition tokens into an empty cache; returns the logits (B, V) of the first image token."""
        h = self._run_layers(self.condition_tokens(labels, beta), 0, cache)
        return self.output(h[:, -1]).float()

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append image tokens (B, T) after the cached prefix; returns the logits (B, V) of the next token."""
        h = self._run_layers(self.tok_embeddings(tokens), cache.length, cache)
        return self.output(h[:, -1]).float()

    def decode_at(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The static-shape decode step: image tokens (B, 1) at sequence position ``pos`` (a (1,) long tensor on the
        model's device) → logits (B, V) of the next token.

        Nothing here depends on a Python number that changes from token to token: the keys/values are written at
        ``pos`` (:meth:`KVCache.write_at`), every query attends to the whole preallocated cache with the positions
        after ``pos`` masked, and RoPE reads its table at ``pos`` — so ``torch.compile`` captures one graph for the
        whole generation, with no host synchronisation per token. ``cache.length`` is the caller's to keep (the
        sampler advances it); ``pos`` must lie in [cache.length, max_seq_len), which the sampler guarantees.
        """
        keys = torch.arange(cache.max_len, device=pos.device)
        mask = (keys[None, :] <= pos[:, None])[None, None]  # (1, 1, T, S): a key is visible once written
        rope = self.rope_table.index_select(0, pos).float()
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, rope, cache, mask, pos)
        return self.output(self.norm(h)[:, -1]).float()

    def next_logits(self, prefix: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """Full recompute, no cache: logits (B, V) of the token after ``prefix`` (B, T) image tokens."""
        h = self.condition_tokens(labels, beta)
        if prefix.shape[1]:
            h = torch.cat([h, self.tok_embeddings(prefix)], dim=1)
        return self.output(self._run_layers(h, 0, None)[:, -1]).float()
