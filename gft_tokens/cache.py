"""A static (preallocated) key/value cache, passed explicitly to a model's forward.

The cache is a plain object owned by the sampler: models never store it on themselves. Buffers are allocated once
for the whole generation, ``(layers, batch, heads, max_len, head_dim)``; every forward writes its new keys and values
at ``[length, length + T)`` of each layer and attends to the prefix ``[0, length + T)``. After the last layer the
model calls :meth:`KVCache.advance`. Writing into fixed buffers (instead of concatenating) keeps decode time flat.

A decode step of static shapes (what ``torch.compile`` captures) uses :meth:`KVCache.write_at` instead: it writes one
position given as a *tensor* and hands back the whole buffers, so neither the shapes nor any Python number change
from token to token; the attention then masks the positions not yet written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    # per-layer views (layer, batch, heads, len, dim) -> (batch, heads, len, dim), made once instead of per call
    k_layers: tuple = field(default=(), repr=False)
    v_layers: tuple = field(default=(), repr=False)

    def __post_init__(self):
        # plain select views (unbind's multi-output views refuse in-place writes under a different grad mode)
        self.k_layers = tuple(self.k[i] for i in range(self.k.shape[0]))
        self.v_layers = tuple(self.v[i] for i in range(self.v.shape[0]))

    @classmethod
    def allocate(cls, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "KVCache":
        shape = (layers, batch, heads, max_len, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` (B, H, T, D) at the current position of ``layer``; return keys/values so far."""
        t = k.shape[2]
        start = self.length
        end = start + t
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions needed, {self.max_len} allocated")
        k_all, v_all = self.k_layers[layer], self.v_layers[layer]
        k_all.narrow(2, start, t).copy_(k)
        v_all.narrow(2, start, t).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def write_at(self, layer: int, pos: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` (B, H, T, D) at positions ``pos`` (T,) (a tensor on the cache's device) of ``layer``;
        return the layer's whole buffers (B, H, max_len, D). Positions past the buffer are the caller's to refuse."""
        k_all, v_all = self.k_layers[layer], self.v_layers[layer]
        k_all.index_copy_(2, pos, k.to(k_all.dtype))
        v_all.index_copy_(2, pos, v.to(v_all.dtype))
        return k_all, v_all

    def advance(self, t: int) -> None:
        """Commit ``t`` new positions (call once per forward, after all layers)."""
        self.length += t

    def reset(self) -> None:
        self.length = 0
