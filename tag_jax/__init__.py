"""tag_jax: which tasks should be trained together? Task grouping (TAG, CS, HOA, DMTG) in
JAX/Flax."""

from tag_jax import host_memory

# Before JAX starts its threads: XLA:CPU's per-step scratch buffer is reused instead of being
# faulted in anew on every step (tag_jax/host_memory.py; TAG_JAX_KEEP_HOST_MEMORY=0 turns it off).
host_memory.keep_freed_memory()

__version__ = "0.1.0"
