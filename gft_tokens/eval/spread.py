"""Spreads of the quality numbers, so that a difference between two settings is called only outside them.

:func:`bootstrap_spread` resamples the generated set with replacement (``n_boot`` times, the reference fixed) and
reports the standard deviation of FID and class accuracy over the resamples; :func:`verdict` compares two values
with their spreads: a difference counts as a win or a loss only when it exceeds ``z`` standard deviations of the
difference (``z = 2``: about 95% for roughly normal estimates), else it is a tie.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GFTError
from . import metrics as M
from .features import FeatureExtractor, extract_all

DEFAULT_BOOTSTRAP = 20


def bootstrap_from_features(features: np.ndarray, probs: np.ndarray | None, labels: np.ndarray | None,
                            ref_mu: np.ndarray, ref_sigma: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP,
                            seed: int = 0) -> dict:
    """``fid_std`` and ``class_accuracy_std`` (None without class probabilities and labels) over ``n_boot``
    resamples of the samples' features."""
    if n_boot < 2:
        raise GFTError(f"a bootstrap spread needs at least 2 resamples, got {n_boot}")
    n = len(features)
    if n < 2:
        raise GFTError(f"a bootstrap spread needs at least 2 samples, got {n}")
    rng = np.random.default_rng(seed)
    fids, accs = [], []
    correct = None
    if probs is not None and labels is not None:
        correct = (np.asarray(probs).argmax(1) == np.asarray(labels)).astype(np.float64)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        s = M.gaussian_stats(features[idx])
        fids.append(M.frechet_distance(s.mu, s.sigma, ref_mu, ref_sigma))
        if correct is not None:
            accs.append(correct[idx].mean())
    return {"fid_std": float(np.std(fids, ddof=1)),
            "class_accuracy_std": float(np.std(accs, ddof=1)) if accs else None, "n_boot": n_boot}


def bootstrap_spread(images: np.ndarray, labels: np.ndarray | None, extractor: FeatureExtractor, reference,
                     n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, batch_size: int = 500) -> dict:
    """:func:`bootstrap_from_features` on generated ``images`` (uint8 (N, H, W, 3)) against ``reference``."""
    features, probs = extract_all(extractor, images, batch_size)
    return bootstrap_from_features(features, probs, labels, reference.stats.mu, reference.stats.sigma, n_boot, seed)


def verdict(a: float, a_std: float | None, b: float, b_std: float | None, lower_is_better: bool = True,
            z: float = 2.0) -> str:
    """"win" if ``a`` beats ``b`` by more than ``z`` standard deviations of the difference, "loss" if it trails by
    as much, else "tie" (also "tie" when no spread is known: nothing can be called then)."""
    if a_std is None or b_std is None:
        return "tie"
    margin = z * math.sqrt(a_std ** 2 + b_std ** 2)
    diff = (b - a) if lower_is_better else (a - b)
    return "win" if diff > margin else "loss" if diff < -margin else "tie"
