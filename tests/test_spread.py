"""Bootstrap spreads of FID and class accuracy, and calling differences only outside them."""

import numpy as np
import pytest

from gft_tokens import GFTError
from gft_tokens.eval import metrics as M
from gft_tokens.eval.spread import bootstrap_from_features, verdict


def sets(n, shift=0.0, seed=0, d=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) + shift


def test_spread_shrinks_with_more_samples_and_matches_the_binomial_for_accuracy():
    ref = sets(4000, seed=1)
    s = M.gaussian_stats(ref)
    small = bootstrap_from_features(sets(200), None, None, s.mu, s.sigma, n_boot=40)
    large = bootstrap_from_features(sets(3200), None, None, s.mu, s.sigma, n_boot=40)
    assert large["fid_std"] < small["fid_std"] / 2  # ~1/sqrt(N) for a fixed reference
    assert small["class_accuracy_std"] is None
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 1000)
    probs = np.eye(10)[np.where(rng.random(1000) < 0.8, labels, (labels + 1) % 10)]  # 80% correct
    out = bootstrap_from_features(sets(1000), probs, labels, s.mu, s.sigma, n_boot=200, seed=5)
    binomial = np.sqrt(0.8 * 0.2 / 1000)
    assert 0.7 * binomial < out["class_accuracy_std"] < 1.3 * binomial


def test_verdict_calls_a_difference_only_outside_the_spread():
    assert verdict(10.0, 0.5, 13.0, 0.5) == "win"        # FID: lower is better, 3 > 2·0.71
    assert verdict(10.0, 0.5, 11.0, 0.5) == "tie"
    assert verdict(13.0, 0.5, 10.0, 0.5) == "loss"
    assert verdict(0.90, 0.01, 0.85, 0.01, lower_is_better=False) == "win"
    assert verdict(0.90, 0.01, 0.89, 0.01, lower_is_better=False) == "tie"
    assert verdict(1.0, None, 9.0, 0.1) == "tie"
    with pytest.raises(GFTError, match="at least 2 resamples"):
        bootstrap_from_features(sets(10), None, None, np.zeros(4), np.eye(4), n_boot=1)
