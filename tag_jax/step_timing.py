"""Compiling and timing one step of a built method on random data of the run's shapes.

What tag_jax.autotune times its candidates with (and benchmarks/ reuse): a random batch of the
per-device size, the method's step jitted with its state donated on the first device (refused
when its scratch memory would not fit: TooLarge), and the seconds of each consecutive step.
"""

import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

MEMORY_FRACTION = 0.8  # candidates needing more than this share of free memory are skipped


class TooLarge(Exception):
    """A candidate's compiled step would not fit in the device's free memory."""


def per_device_batch(config) -> int:
    """The batch one device steps on: config.batch_size over the mesh's data axis."""
    networks = max(config.mesh.networks, 1)
    data = config.mesh.data if config.mesh.data > 0 else max(len(jax.devices()) // networks, 1)
    return max(config.batch_size // data, 1)


def random_batch(
    batch_size: int, image_shape, num_tasks: int, num_classes: int, seed: int = 0
) -> dict:
    """{'image' (B, *image_shape) uniform in [0, 1), 'labels' (B, T) int32, 'mask' (B,) ones}."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(size=(batch_size, *image_shape)).astype(np.float32),
        "labels": rng.integers(0, num_classes, (batch_size, num_tasks)).astype(np.int32),
        "mask": np.ones(batch_size, np.float32),
    }


def free_memory_bytes(device) -> Optional[int]:
    """Free memory of `device` (host RAM for CPU), or None when unknown."""
    try:
        stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except (backends differ in what they support)
        stats = None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pick_step(method, kind: str) -> Callable:
    """The method's 'train' or 'measured' step (its train step when it measures nothing)."""
    return (
        method.measured_step if kind == "measured" and method.measured_step else method.train_step
    )


def step_mix(method) -> list:
    """[(kind, share of the run's steps)]: a method with a measured step runs it every
    measure_every steps and its train step otherwise. Deciding on this mix rather than on the
    more frequent step matters: at 40-100 tasks TAG's measured step costs 50-400 plain steps, and
    a convolution that wins the plain step lost it 4-9x (benchmarks/README.md)."""
    if method.measured_step is None:
        return [("train", 1.0)]
    if method.measure_every == 1:
        return [("measured", 1.0)]
    return [("train", 1 - 1 / method.measure_every), ("measured", 1 / method.measure_every)]


def compile_step(method, kind: str, batch: dict):
    """(compiled step, initial state, batch on the device) of `method`'s `kind` step ('train' |
    'measured'), jitted with the state donated, on the first device; compile time
    logged. TooLarge when the compiled step's scratch memory exceeds MEMORY_FRACTION of the
    device's free memory."""
    device = jax.devices()[0]
    if method.seeds > 1:  # one batch per seed (tag_jax.methods.base)
        batch = {k: np.stack([v] * method.seeds) for k, v in batch.items()}
    with jax.default_device(device):
        state = jax.jit(method.init_state)(jax.random.key(0))
        batch = jax.device_put(batch, device)
        start = time.perf_counter()
        compiled = (
            jax.jit(
                pick_step(method, kind), donate_argnums=0, compiler_options=method.compiler_options
            )
            .lower(state, batch)
            .compile()
        )
    logging.vlog(1, "autotune: compiled the %s step in %.1f s", kind, time.perf_counter() - start)
    memory = compiled.memory_analysis()
    scratch = getattr(memory, "temp_size_in_bytes", None) if memory else None
    free = free_memory_bytes(device)
    if scratch and free and scratch > MEMORY_FRACTION * free:
        raise TooLarge(
            f"needs {scratch / 2**30:.1f} GiB of scratch memory, {free / 2**30:.1f} GiB free"
        )
    return compiled, state, batch


def run_steps(compiled, state, batch, steps: int):
    """(state, seconds of each of `steps` consecutive steps), the state passed from step to step."""
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        seconds.append(time.perf_counter() - start)
    return state, seconds


def time_method_step(method, kind: str, batch: dict, steps: int):
    """Yields the seconds of each of `steps` consecutive steps of `method` after compiling
    (compile_step), one at a time, so that a slow candidate can be abandoned early. kind 'mix':
    each yield is the step_mix-weighted mean of one step of each kind the run takes."""
    parts = step_mix(method) if kind == "mix" else [(kind, 1.0)]
    runs = [[*compile_step(method, part, batch), share] for part, share in parts]
    for _ in range(steps):
        total = 0.0
        for run in runs:
            compiled, state, on_device, share = run
            run[1], (seconds,) = run_steps(compiled, state, on_device, 1)
            total += share * seconds
        yield total


def step_time(seconds: Sequence[float]) -> float:
    """A candidate's time: the median of its steps after the first (the only one if just one)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)
