"""Stacked pytrees: tiling, taking, mapping with each strategy, and the one 'auto' resolver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tag_jax import stacking


def test_auto_on_cpu_unrolls_few_slices_then_maps_or_vmaps():
    assert jax.default_backend() == "cpu"
    few, many = stacking.UNROLL_MAX_ON_CPU, stacking.UNROLL_MAX_ON_CPU + 1
    assert stacking.resolve("auto", few) == "unrolled"
    assert stacking.resolve("auto", many) == "map"
    trained = stacking.UNROLL_MAX_ON_CPU_DIFFERENTIATED
    assert stacking.resolve("auto", trained, differentiated=True) == "unrolled"
    assert stacking.resolve("auto", trained + 1, differentiated=True) == "vmap"
    assert stacking.resolve("vmap", 2) == "vmap" and stacking.resolve("map", 2) == "map"
    with pytest.raises(ValueError, match="strategy must be one of"):
        stacking.resolve("loop", 2)


def test_tile_and_take():
    tree = {"a": jnp.arange(3.0), "b": {"c": jnp.array(2.0)}}
    tiled = stacking.tile(tree, 4)
    assert tiled["a"].shape == (4, 3) and tiled["b"]["c"].shape == (4,)
    np.testing.assert_array_equal(tiled["a"][2], [0.0, 1.0, 2.0])
    taken = stacking.take({"a": jnp.arange(12.0).reshape(4, 3)}, [3, 1])
    np.testing.assert_array_equal(taken["a"], [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]])


@pytest.mark.parametrize(
    "strategy, chunk_size", [("unrolled", None), ("vmap", None), ("map", None), ("map", 2)]
)
def test_map_stacked_equals_a_python_loop(strategy, chunk_size):
    weights = {"w": jnp.arange(15.0).reshape(5, 3), "b": jnp.arange(5.0)}
    inputs = jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)

    def fn(params, x):
        return {"y": jnp.tanh(params["w"] * x).sum() + params["b"], "z": params["w"] * 2.0}

    got = jax.jit(
        lambda p, x: stacking.map_stacked(fn, p, x, strategy=strategy, chunk_size=chunk_size)
    )(weights, inputs)
    for g in range(5):
        want = fn({"w": weights["w"][g], "b": weights["b"][g]}, inputs[g])
        np.testing.assert_allclose(got["y"][g], want["y"], rtol=1e-6)
        np.testing.assert_array_equal(got["z"][g], want["z"])
    with pytest.raises(ValueError, match="resolved strategy"):
        stacking.map_stacked(fn, weights, inputs, strategy="auto")
