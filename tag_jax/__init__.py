"""tag_jax: which tasks should be trained together? Task grouping (TAG, CS, HOA, DMTG) in JAX/Flax."""

__version__ = "0.1.0"
