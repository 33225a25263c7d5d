"""Early stopping over a vector of network losses, and keeping each network's best parameters."""

import jax.numpy as jnp
import numpy as np

from tag_jax import early_stopping


def test_each_network_stops_on_its_own_and_the_run_when_all_have():
    record = early_stopping.initial_record(2)
    best = {"w": jnp.zeros((2, 3))}
    history = [(1.0, 1.0), (0.5, 2.0), (0.7, 0.1), (0.6, 0.2), (0.1, 0.0), (0.0, 0.5), (0.0, 0.5)]
    for epoch, losses in enumerate(history, start=1):
        record, improved, stopped = early_stopping.update(
            record, np.array(losses), epoch, patience=2
        )
        best = early_stopping.keep_best(
            improved, {"w": jnp.full((2, 3), float(epoch))}, best, stacked=True
        )
        assert stopped == (epoch == 7)
    # Network 0 is best at epoch 2 and stops after epoch 4 (patience 2): its later, lower losses
    # are ignored, as in a separate run. Network 1 is best at epoch 5 and stops after epoch 7.
    assert record["best_epoch"] == [2, 5]
    assert record["best_loss"] == [0.5, 0.0]
    assert record["epochs_without_improvement"] == [5, 2]
    np.testing.assert_array_equal(best["w"], [[2.0] * 3, [5.0] * 3])


def test_one_network_is_the_usual_rule_on_the_whole_tree():
    record = early_stopping.initial_record(1)
    best = {"a": jnp.zeros(2), "b": {"c": jnp.zeros(())}}
    for epoch, loss in enumerate([3.0, 2.0, 2.5, 2.0], start=1):  # equal is no improvement
        record, improved, stopped = early_stopping.update(
            record, np.array([loss]), epoch, patience=2
        )
        current = {"a": jnp.full(2, float(epoch)), "b": {"c": jnp.array(float(epoch))}}
        best = early_stopping.keep_best(improved, current, best, stacked=False)
    assert stopped and record["best_epoch"] == [2]
    np.testing.assert_array_equal(best["a"], [2.0, 2.0])
    assert float(best["b"]["c"]) == 2.0


def test_patience_zero_never_stops():
    record = early_stopping.initial_record(1)
    for epoch in range(1, 30):
        record, _, stopped = early_stopping.update(record, np.array([1.0]), epoch, patience=0)
        assert not stopped
    assert record["best_epoch"] == [1] and record["epochs_without_improvement"] == [28]


def test_no_network_stops_before_the_minimum_steps():
    """Out of patience after epoch 3, but may_stop is False until epoch 5: the later improvement
    at epoch 4 counts, and the run stops two epochs after it, not at epoch 3."""
    record = early_stopping.initial_record(1)
    stops = []
    for epoch, loss in enumerate([1.0, 2.0, 2.0, 0.5, 0.9, 0.9, 0.9], start=1):
        record, improved, stopped = early_stopping.update(
            record, np.array([loss]), epoch, patience=2, may_stop=epoch >= 5
        )
        stops.append(stopped)
    assert record["best_epoch"] == [4]
    assert stops == [False] * 5 + [True, True]
