"""The bootstrap over evaluation examples (tag_jax.resampling) against a loop and the exact
distribution of a two-example resample."""

import numpy as np

from tag_jax import resampling


def test_resample_means_equal_a_loop():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(5, 2, 3))
    indices = rng.integers(0, 5, size=(7, 5))
    expected = np.stack([np.mean([values[i] for i in row], axis=0) for row in indices])
    np.testing.assert_allclose(resampling.resample_means(values, indices), expected, rtol=1e-12)


def test_bootstrap_means_are_seeded_and_resample_with_replacement():
    """Two examples valued 0 and 1: a resample's mean is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4."""
    means = resampling.bootstrap_means(np.array([0.0, 1.0]), 4000, seed=5)
    shares = [np.mean(means == m) for m in (0.0, 0.5, 1.0)]
    np.testing.assert_allclose(shares, [0.25, 0.5, 0.25], atol=0.03)
    np.testing.assert_array_equal(means, resampling.bootstrap_means(np.array([0.0, 1.0]), 4000, 5))
    assert not np.array_equal(means, resampling.bootstrap_means(np.array([0.0, 1.0]), 4000, 6))
    assert resampling.bootstrap_means(np.ones((3, 2)), 130, seed=0).shape == (130, 2)
