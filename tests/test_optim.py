"""Learning-rate schedules against their closed forms."""

import math

import numpy as np
import pytest

from tag_jax import default_config, optim


def schedule_config(schedule, warmup, epochs=4):
    config = default_config.get_base_config()
    config.num_epochs = epochs
    config.optimizer.learning_rate = 0.1
    config.optimizer.schedule = schedule
    config.optimizer.warmup_steps = warmup
    config.optimizer.decay_every_epochs = 2
    config.optimizer.decay_factor = 0.5
    return config


def expected(schedule, warmup, step, steps_per_epoch=10, epochs=4, lr=0.1):
    ramp = min(1.0, (1 + step * (warmup - 1) / warmup) / warmup) if warmup else 1.0
    if schedule == "constant":
        return lr * ramp
    if schedule == "step":
        return lr * 0.5 ** (step // (2 * steps_per_epoch)) * ramp
    if step < warmup:
        return lr * ramp
    total = epochs * steps_per_epoch - warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, total) / total))


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 5])
def test_schedule_matches_its_closed_form(schedule, warmup):
    fn = optim.learning_rate_schedule(schedule_config(schedule, warmup), steps_per_epoch=10)
    got = [float(fn(s)) for s in range(41)]
    want = [expected(schedule, warmup, s) for s in range(41)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert min(got[:40]) > 0  # never 0 during training: the lookahead affinity divides by it
