"""The learning-rate schedule every trainer here uses (generators, tokenizers, the probe): linear warm-up, then a
cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """LR multiplier at ``step`` (0-based): (step + 1)/warmup during ``warmup`` steps, then a half cosine from 1 down to
    ``floor`` at step ``total`` (held there after)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
