"""Text-to-image LlamaGen: LlamaGen's blocks (imported from the c2i family) with LlamaGen's t2i conditioning.

The prefix is ``caption_len`` positions (``cls_token_num``) of caption embeddings: text-encoder features (B, L, C)
→ :class:`~gft_tokens.conditioning.CaptionEmbedder` (MLP; the learned null caption for dropped rows) [+ the
zero-initialised β embedding at every prefix position, for GFT] → (B, L, D). Captions are left-padded; attention
is causal, and no position attends to a padded caption position except that position itself (so padded
positions change nothing, and each still has one key to attend to), exactly LlamaGen's t2i mask. The prefix
positions read the zero rows of the 2D RoPE table (their queries and keys are zero, as LlamaGen's caption tokens);
image tokens follow in raster order.

Two config fields reproduce LlamaGen's released t2i network (``llamagen-t2i`` import) while the defaults stay this
toolkit's: ``caption_bias`` (False: the caption MLP has no biases, as LlamaGen's) and ``null_caption_mask``
(``"caption"``: a dropped caption, in training and in CFG's null half, keeps its caption's padding mask, as
LlamaGen's; ``"full"``, the default: the null caption is visible at every position).

Training uses the inherited :meth:`forward` / :meth:`head_inputs` with a :class:`~gft_tokens.conditioning.Caption`
as the condition; sampling uses :meth:`prefill` (returns the logits and the prefix mask) then :meth:`decode` with
that mask and an explicit KV cache.
"""

from __future__ import annotations

import torch

from ...cache import KVCache
from ...conditioning import Caption, CaptionEmbedder, check_beta
from ...errors import GFTError
from ...pretrained import preset_config
from ...tokenizers.vq import check_codes
from ..llamagen.model import PRESETS, LlamaGen, LlamaGenConfig


class T2IConfig(LlamaGenConfig):
    model_type = "gft_t2i"

    def __init__(self, caption_dim: int = 64, caption_len: int = 16, text_encoder: dict | None = None,
                 caption_bias: bool = True, null_caption_mask: str = "full", **kwargs):
        self.caption_dim, self.caption_len = int(caption_dim), int(caption_len)
        self.text_encoder = text_encoder  # what the captions were encoded with: path, type, hidden_size, max_length
        self.caption_bias = bool(caption_bias)  # biases in the caption MLP (LlamaGen's released t2i: none)
        self.null_caption_mask = null_caption_mask  # "full" | "caption" (LlamaGen's): a dropped row's padding mask
        if null_caption_mask not in CaptionEmbedder.NULL_MASKS:
            raise GFTError(f"null_caption_mask must be one of {', '.join(map(repr, CaptionEmbedder.NULL_MASKS))}, "
                           f"got {null_caption_mask!r}")
        kwargs["cls_token_num"] = self.caption_len
        kwargs.setdefault("num_classes", 0)
        super().__init__(**kwargs)
        if self.class_token_layout != "repeat":
            raise GFTError(f"class_token_layout {self.class_token_layout!r} is for class-conditional LlamaGen; a "
                           f"text-to-image model's prefix is its caption positions")


def t2i_config(preset: str, **overrides) -> T2IConfig:
    """A :class:`T2IConfig` from a LlamaGen preset name plus overrides (``caption_dim``, ``caption_len`` …)."""
    return preset_config(T2IConfig, PRESETS, preset, "LlamaGen preset", overrides, strict=True)


def caption_attention_mask(prefix_mask: torch.Tensor, start: int, t: int) -> torch.Tensor:
    """(B, 1, t, start + t) bool: queries ``start … start+t-1`` attend causally to every key except padded caption
    positions (``prefix_mask`` False), which only they themselves attend to."""
    b, p = prefix_mask.shape
    s = start + t
    q = torch.arange(start, s, device=prefix_mask.device)[:, None]
    k = torch.arange(s, device=prefix_mask.device)[None, :]
    key_ok = torch.ones(b, s, dtype=torch.bool, device=prefix_mask.device)
    key_ok[:, :min(p, s)] = prefix_mask[:, :min(p, s)]
    return ((k <= q)[None] & (key_ok[:, None, :] | (k == q)[None]))[:, None]


class T2ILlamaGen(LlamaGen):
    config_class = T2IConfig

    def __init__(self, config: T2IConfig):
        super().__init__(config)
        self.cls_embedding = CaptionEmbedder(config.caption_dim, config.dim, config.caption_len,
                                             std=config.initializer_range, bias=config.caption_bias,
                                             null_mask=config.null_caption_mask)

    @property
    def null_class(self):
        return None  # the null caption is a learned embedding: dropped rows are marked on the Caption

    def condition_tokens(self, caption: Caption, beta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption embeddings (+ β embedding) over the prefix: (B, L, D) and the prefix mask (B, L)."""
        if not isinstance(caption, Caption):
            raise GFTError("this is a text-to-image model: it is conditioned on captions (prompts), not class ids")
        h, mask = self.cls_embedding(caption)
        if beta is not None:
            if self.beta_embedder is None:
                raise GFTError("this model has no β input (trained with the CFG objective); sample it with "
                               "cfg_scale, or fine-tune it with --objective gft --init-from")
            h = h + self.beta_embedder(check_beta(beta, h.shape[0], device=h.device)).to(h.dtype)[:, None]
        return h, mask

    def _teacher_forced_hidden(self, codes, caption, beta) -> torch.Tensor:
        c = self.config
        codes = check_codes(codes, c.vocab_size, ndim=2)
        if codes.shape[1] != c.block_size:
            raise GFTError(f"expected {c.block_size} image tokens ({c.grid_size}x{c.grid_size} grid), got {codes.shape[1]}")
        cond, pmask = self.condition_tokens(caption, beta)
        x = torch.cat([cond, self.tok_embeddings(codes[:, :-1].to(cond.device))], dim=1)
        h = self._run_layers(self.tok_dropout(x), 0, None, caption_attention_mask(pmask, 0, x.shape[1]))
        return h[:, c.cls_token_num - 1:]

    def prefill(self, caption: Caption, beta, cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption prefix into an empty cache: (logits (B, V) of the first image token, prefix mask (B, L))."""
        h, pmask = self.condition_tokens(caption, beta)
        h = self._run_layers(h, 0, cache, caption_attention_mask(pmask, 0, h.shape[1]))
        return self.output(h[:, -1]).float(), pmask

    def decode(self, tokens: torch.Tensor, cache: KVCache, prefix_mask: torch.Tensor) -> torch.Tensor:
        """Append image tokens (B, T) after the cached prefix (its mask ``prefix_mask``); next-token logits (B, V)."""
        start = cache.length
        h = self._run_layers(self.tok_embeddings(tokens), start, cache,
                             caption_attention_mask(prefix_mask, start, tokens.shape[1]))
        return self.output(h[:, -1]).float()

    def next_logits(self, prefix: torch.Tensor, caption: Caption, beta) -> torch.Tensor:
        """Full recompute, no cache: logits (B, V) of the token after ``prefix`` (B, T) image tokens."""
        h, pmask = self.condition_tokens(caption, beta)
        if prefix.shape[1]:
            h = torch.cat([h, self.tok_embeddings(prefix)], dim=1)
        return self.output(self._run_layers(h, 0, None, caption_attention_mask(pmask, 0, h.shape[1]))[:, -1]).float()
