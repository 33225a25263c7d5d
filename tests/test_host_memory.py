"""import tag_jax keeps freed host memory,
so XLA:CPU's scratch buffer is not faulted in per call."""

import json
import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted program whose temporary buffer (about 69 MB) is above glibc's largest mmap threshold.
PROBE = """
import json, resource
import tag_jax, jax, jax.numpy as jnp
@jax.jit
def f(x):
  y = jnp.sin(x) @ x
  return (jnp.cos(y) @ y).sum()
x = jnp.full((3000, 3000), 0.01)
f(x).block_until_ready(); f(x).block_until_ready()
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"kept": tag_jax.host_memory.keep_freed_memory(), "temp_pages": temp / 4096,
                  "faults_per_call": faults}))
"""


def probe(keep: str) -> dict:
    env = {**os.environ, "TAG_JAX_KEEP_HOST_MEMORY": keep, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the allocator setting is glibc's",
)
def test_scratch_buffer_is_not_faulted_in_again_on_every_call():
    kept, released = probe("1"), probe("off")
    assert kept["kept"] and not released["kept"]
    assert released["temp_pages"] > 32 * 2**20 / 4096  # above the mmap threshold
    # Without the setting every call faults its scratch buffer (and the library's packing buffers:
    # ~25 times the scratch pages here) in again; with it, the pages stay (0-9k faults per call
    # remain, from the heap still growing a little).
    assert released["faults_per_call"] > released["temp_pages"]
    assert kept["faults_per_call"] < released["faults_per_call"] / 10
