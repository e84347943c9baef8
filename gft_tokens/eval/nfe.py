"""Counting network evaluations (NFE) during sampling, measured rather than assumed.

One *network evaluation per image* is one row of the batch through the model's output head: an autoregressive
GFT sampler does one per token, a CFG sampler two (its batch is [conditional; unconditional]); a next-scale model
one per scale, a masked model one per step. :class:`ForwardCounter` hooks every
:class:`~gft_tokens.nn.OutputHead` of the model and sums the rows it sees per call (a call on a (B, T, D) hidden
state with T > 1, as in a training forward, still counts as B evaluations: one pass of the network).
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import GFTError
from ..nn import OutputHead


class ForwardCounter:
    """Context manager: ``with ForwardCounter(model) as c: sample(...)`` then ``c.rows``, ``c.calls``,
    ``c.per_image(batch)``."""

    def __init__(self, model: nn.Module):
        self.heads = [m for m in model.modules() if isinstance(m, OutputHead)]
        if not self.heads:
            raise GFTError(f"{type(model).__name__} has no OutputHead to count network evaluations through")
        self.rows = 0
        self.calls = 0
        self._handles = []

    def _hook(self, module, args):
        hidden = args[0]
        self.rows += int(hidden.shape[0])
        self.calls += 1

    def __enter__(self) -> "ForwardCounter":
        # the first head only: a model with several heads evaluates them in one network pass
        self._handles = [self.heads[0].register_forward_pre_hook(self._hook)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def per_image(self, images: int) -> float:
        if images <= 0:
            raise GFTError(f"number of images must be positive, got {images}")
        return self.rows / images
