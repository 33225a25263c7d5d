"""losses.masked_task_mean against a loop over the real examples."""

import numpy as np

from tag_jax import losses


def naive_mean(example_losses, mask):
    real = [b for b in range(len(mask)) if mask[b]]
    return sum(example_losses[b] for b in real) / len(real)


def test_masked_task_mean_counts_only_real_examples_with_leading_axes():
    rng = np.random.default_rng(0)
    mask = np.array([1, 1, 0, 1, 0], np.float32)
    per_example = rng.normal(size=(3, 5, 4)).astype(np.float32)  # (K, B, T)
    got = np.asarray(losses.masked_task_mean(per_example, mask))
    assert got.shape == (3, 4)
    for k in range(3):
        np.testing.assert_allclose(got[k], naive_mean(per_example[k], mask), rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(losses.masked_task_mean(per_example[k], mask)), got[k], rtol=1e-6
        )


def test_masked_task_mean_of_an_all_padded_batch_is_zero():
    assert np.all(
        np.asarray(losses.masked_task_mean(np.ones((4, 2), np.float32), np.zeros(4, np.float32)))
        == 0.0
    )
