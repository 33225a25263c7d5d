"""Keep freed host memory for reuse, so that XLA:CPU's per-step scratch buffer is not faulted in
again on every step (glibc on Linux).

XLA:CPU allocates each execution's temporary buffer anew and frees it when the step ends (the
TAG step's: 221 MB at 32x32, batch 32, 9 tasks). glibc serves any allocation above its mmap
threshold (at most 32 MiB) with a fresh `mmap` and returns it to the kernel on `free`, so every
step touches every page of that buffer for the first time again: 57,000 minor page faults per
TAG step, about 100 ms of kernel time on the 2-core development CPU (benchmarks/README.md).
TensorFlow's and PyTorch's steps do not pay it: their tensors are smaller than the threshold.

`keep_freed_memory()` makes glibc serve every allocation from one heap (M_MMAP_MAX = 0,
M_ARENA_MAX = 1) and keep up to TRIM_THRESHOLD bytes of freed memory in the process instead of
trimming it (M_TRIM_THRESHOLD): freed pages stay mapped and the next step reuses them. The
process's resident memory then stays at its peak instead of shrinking between steps. It must run
before JAX starts its threads (each thread picks its malloc arena at its first allocation), so
`import tag_jax` runs it; set TAG_JAX_KEEP_HOST_MEMORY to 0, false, off or no to leave the
allocator as it is. (If JAX's threads already exist, M_ARENA_MAX no longer reaches them.)
"""

import os
import platform
import sys

ENV_SWITCH = "TAG_JAX_KEEP_HOST_MEMORY"
TRIM_THRESHOLD = 2**31 - 1  # bytes of freed heap kept (the largest value mallopt takes)
# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8

_applied = None


def keep_freed_memory() -> bool:
    """Tunes glibc's malloc as the module docstring says (once per process); True when in effect.

    A no-op returning False off Linux/glibc or when TAG_JAX_KEEP_HOST_MEMORY=0.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes  # pylint: disable=import-outside-toplevel (absent from some Python builds)

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (ImportError, OSError, AttributeError):
        return False
    settings = ((M_MMAP_MAX, 0), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([mallopt(param, value) == 1 for param, value in settings])
