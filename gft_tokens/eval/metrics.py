"""Sample-quality metrics computed from features: FID, Inception Score, precision/recall, class accuracy.

Everything here is a pure function of arrays (float64 numpy inside), independent of which network produced the
features, so the same code serves the shapes probe and an Inception network alike.

* :func:`frechet_distance` — ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½). The matrix square root is taken by
  symmetric eigen-decompositions (no ``scipy.linalg.sqrtm``): ``Σ₁^½`` from ``eigh(Σ₁)`` with negative round-off
  eigenvalues clipped to 0, then ``tr((Σ₁^½ Σ₂ Σ₁^½)^½) = Σ √λᵢ`` over the eigenvalues of that symmetric PSD
  matrix. Σ₁^½ Σ₂ Σ₁^½ is similar to Σ₁Σ₂, so this is the same trace the usual ``sqrtm(Σ₁ Σ₂)`` gives, but it
  never takes the square root of a non-symmetric matrix and so never returns the complex round-off
  ``sqrtm`` is known for on near-singular covariances.
* :func:`inception_score` — exp(E_x KL(p(y|x) ‖ p(y))), mean and standard deviation over ``splits``.
* :func:`precision_recall` — Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for Assessing
  Generative Models"): each set's manifold is the union of balls around its points with radius the distance to
  the point's k-th nearest neighbour in the same set; precision is the fraction of generated points inside the
  real manifold, recall the fraction of real points inside the generated manifold.
* :func:`class_accuracy` — argmax of a classifier's probabilities equals the requested label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GFTError


def _as_2d(x, name: str) -> np.ndarray:
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if x.ndim != 2:
        raise GFTError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise GFTError(f"{name} contain NaN or infinite values")
    return x.astype(np.float64, copy=False)


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, and how many samples they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(features) -> GaussianStats:
    """Mean and unbiased covariance of features (N, D), in float64."""
    f = _as_2d(features, "features")
    if f.shape[0] < 2:
        raise GFTError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return GaussianStats(mu, (sigma + sigma.T) / 2.0, f.shape[0])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (round-off negative eigenvalues → 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ₁ Σ₂)^½) for symmetric PSD Σ₁, Σ₂, computed as tr((Σ₁^½ Σ₂ Σ₁^½)^½)."""
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (the FID when the moments come from features)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise GFTError(f"means must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise GFTError(f"covariances must be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(value, 0.0)  # exact arithmetic never goes below 0; round-off may, by ~1e-12·tr(Σ)


def fid_from_features(features_a, features_b) -> float:
    """FID between two feature sets (N, D) and (M, D)."""
    a, b = gaussian_stats(features_a), gaussian_stats(features_b)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def inception_score(probs, splits: int = 10, seed: int = 0, shuffle: bool = True) -> tuple[float, float]:
    """(mean, std) over ``splits`` parts of exp(E KL(p(y|x) ‖ p(y))) for class probabilities (N, K).

    The parts are a random partition (fixed by ``seed``), not contiguous slices: sample files are usually ordered by
    class, and a slice holding one class would have a one-hot marginal and a score near 1. ``shuffle=False`` takes
    contiguous parts, as ADM's evaluator (parts of 5000: 10 for 50k samples) and improved-gan do.
    """
    p = _as_2d(probs, "class probabilities")
    if (p < -1e-6).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise GFTError("class probabilities must be non-negative rows summing to 1 (pass softmax outputs)")
    if not 1 <= splits <= p.shape[0]:
        raise GFTError(f"inception score needs 1 ≤ splits ≤ N = {p.shape[0]}, got splits={splits}")
    p = np.clip(p, 1e-12, 1.0)
    if shuffle:
        p = p[np.random.default_rng(seed).permutation(p.shape[0])]
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part) - np.log(marginal))).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise_dist(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64, computed in row chunks."""
    return torch.cat([torch.cdist(a[i:i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
                      for i in range(0, len(a), chunk)])


def knn_radii(features, k: int = 3) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour within the same set (itself excluded)."""
    f = torch.from_numpy(_as_2d(features, "features"))
    if not 1 <= k < len(f):
        raise GFTError(f"k-NN radii need 1 ≤ k < N = {len(f)}, got k={k}")
    d = _pairwise_dist(f, f)
    # the k+1-th smallest in each row: the 0-th is the point itself (distance 0)
    return torch.kthvalue(d, k + 1, dim=1).values.numpy()


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> float:
    """Fraction of ``points`` within radius of at least one centre."""
    inside = 0
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres, compute_mode="donot_use_mm_for_euclid_dist")
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(points)


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds (k = 3 as in the paper).

    Use equal-sized sets: the k-NN radii shrink as a set grows, so unequal sizes bias the two numbers.
    """
    real = torch.from_numpy(_as_2d(real_features, "real features"))
    fake = torch.from_numpy(_as_2d(fake_features, "generated features"))
    if real.shape[1] != fake.shape[1]:
        raise GFTError(f"feature dimensions differ: real {real.shape[1]}, generated {fake.shape[1]}")
    real_r = torch.from_numpy(knn_radii(real.numpy(), k))
    fake_r = torch.from_numpy(knn_radii(fake.numpy(), k))
    return _coverage(fake, real, real_r), _coverage(real, fake, fake_r)


def class_accuracy(probs, labels) -> float:
    """Fraction of rows whose most probable class is the requested label."""
    p = _as_2d(probs, "class probabilities")
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if y.shape != (p.shape[0],):
        raise GFTError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    return float((p.argmax(axis=1) == y).mean())


def per_class_accuracy(probs, labels, num_classes: int) -> list[float | None]:
    """Accuracy for each class id (None for a class with no samples)."""
    p = _as_2d(probs, "class probabilities")
    y = np.asarray(labels)
    hit = p.argmax(axis=1) == y
    return [float(hit[y == c].mean()) if (y == c).any() else None for c in range(num_classes)]
