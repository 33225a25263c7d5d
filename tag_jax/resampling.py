"""Bootstrap over evaluation examples (numpy): resampled means of per-example values.

A resample draws E of the E examples with replacement; its mean of a per-example value is the
mean over the drawn examples (an example drawn twice counts twice). HOA's confidence resamples
the validation examples behind every pair's score this way (tag_jax.methods.hoa), DMTG's the
examples behind every branch's loss (tag_jax.methods.dmtg_confidence). Deterministic for a seed.
"""

import numpy as np

ROWS_PER_CHUNK = 64  # resamples drawn and averaged at a time: (64, E) counts in memory


def bootstrap_indices(num_examples: int, num_resamples: int, rng) -> np.ndarray:
    """(num_resamples, num_examples) example indices drawn uniformly with replacement from
    rng (a numpy Generator)."""
    return rng.integers(0, num_examples, size=(num_resamples, num_examples))


def resample_means(values, indices) -> np.ndarray:
    """(R, ...) mean of values (E, ...) over each row of indices (R, n): sum of the drawn
    examples' values over n, as counts (R, E) @ values, float64."""
    values = np.asarray(values, np.float64)
    indices = np.asarray(indices)
    num_examples = len(values)
    rows = np.arange(len(indices))[:, None]
    counts = np.bincount(
        (rows * num_examples + indices).ravel(), minlength=len(indices) * num_examples
    ).reshape(len(indices), num_examples)
    flat = counts @ values.reshape(num_examples, -1) / indices.shape[1]
    return flat.reshape((len(indices),) + values.shape[1:])


def bootstrap_means(values, num_resamples: int, seed: int) -> np.ndarray:
    """(num_resamples, ...) means of values (E, ...) over bootstrap resamples of its E examples;
    drawn ROWS_PER_CHUNK resamples at a time from np.random.default_rng(seed)."""
    if len(values) == 0:
        raise ValueError("no examples to resample")
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, num_resamples, ROWS_PER_CHUNK):
        rows = min(ROWS_PER_CHUNK, num_resamples - start)
        chunks.append(resample_means(values, bootstrap_indices(len(values), rows, rng)))
    return np.concatenate(chunks) if chunks else np.zeros((0,) + np.shape(values)[1:])
