"""Pytrees stacked on a leading axis, and mapping a function over that axis.

Used wherever the project holds several copies of one thing side by side: the
per-task gradient pulls and lookahead forwards of TAG/CS (affinity.py), DMTG's
K branches, and the G networks of group/pair training.

Strategies: 'unrolled' (a traced Python loop, one copy of the program per slice),
'vmap' (one batched program) and 'map' (`lax.map`, in chunks of `chunk_size`:
bounded memory, one compiled body). `resolve` turns 'auto' into one of them:
- GPU/TPU: 'vmap'.
- CPU: 'unrolled' up to UNROLL_MAX_ON_CPU slices that are only evaluated
  (lookahead forwards, gradient pulls; XLA:CPU batches convolutions over a
  parameter axis poorly), 'map' beyond (unrolling 40 trunks compiled for minutes
  and ran slower). Slices an outer gradient is taken through (group/pair
  networks, DMTG branches) are unrolled up to UNROLL_MAX_ON_CPU_DIFFERENTIATED,
  'vmap' beyond (a gradient through `lax.map` of convolutions is very slow on
  XLA:CPU): HOA's 55 networks of 10 tasks (8x8 images, width 16, batch 64) took
  6.4 s a step vmapped and 0.34 s unrolled, after a 110 s compile against 15 s.
"""

from typing import Callable

import jax
import jax.numpy as jnp

STRATEGIES = ("auto", "unrolled", "vmap", "map")
UNROLL_MAX_ON_CPU = 16  # slices that are only evaluated
UNROLL_MAX_ON_CPU_DIFFERENTIATED = 64  # slices an outer gradient goes through


def resolve(strategy: str, size: int, *, differentiated: bool = False) -> str:
    """The strategy for mapping over `size` slices
    ('auto' resolved as the module docstring says)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"stacking strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    if jax.default_backend() != "cpu":
        return "vmap"
    limit = UNROLL_MAX_ON_CPU_DIFFERENTIATED if differentiated else UNROLL_MAX_ON_CPU
    if size <= limit:
        return "unrolled"
    return "vmap" if differentiated else "map"


def timing_candidates(size: int, *, differentiated: bool = False) -> tuple:
    """The strategies worth timing for `size` slices (tag_jax.autotune): 'unrolled' only up to
    UNROLL_MAX_ON_CPU slices (beyond, it compiles for minutes); 'map' only beyond that, and only
    for slices no outer gradient goes through (a gradient through `lax.map` of convolutions is
    very slow). On CPU, where 'unrolled' is timed, 'map' never won and can cost minutes to time
    (benchmarks/README.md: TAG, 9 tasks, CPU 11 s against 0.75 s a step at 32x32 and 104 s
    against 4.1 s at 64x64); on an accelerator it stays, the memory-lean fallback."""
    unrolled = size <= UNROLL_MAX_ON_CPU
    mapped = not differentiated and (not unrolled or jax.default_backend() != "cpu")
    return ("unrolled",) * unrolled + ("vmap",) + ("map",) * mapped


def tile(tree, copies: int):
    """Every leaf repeated on a new leading axis: (...) -> (copies, ...), identical copies."""
    return jax.tree.map(lambda a: jnp.repeat(a[None], copies, axis=0), tree)


def take(tree, indices):
    """The slices `indices` of a stacked tree: leaves (G, ...) -> (len(indices), ...)."""
    return jax.tree.map(lambda a: a[jnp.asarray(indices)], tree)


def map_stacked(fn: Callable, *stacked, strategy: str, chunk_size: int | None = None):
    """fn(*slices) for every slice of the stacked (G, ...) pytrees; outputs stacked on axis 0.

    strategy: 'unrolled' | 'vmap' | 'map' (resolved; see `resolve`); chunk_size: 'map' only.
    """
    if strategy == "vmap":
        return jax.vmap(fn)(*stacked)
    if strategy == "map":
        return jax.lax.map(lambda xs: fn(*xs), stacked, batch_size=chunk_size)
    if strategy != "unrolled":
        raise ValueError(f"map_stacked needs a resolved strategy, got {strategy!r}")
    size = jax.tree.leaves(stacked)[0].shape[0]
    outputs = [fn(*jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(size)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)
