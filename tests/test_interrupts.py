"""tag_jax.interrupts: the command lines' SIGINT handler, in a fresh process each (it is global)."""

import subprocess
import sys

from conftest import REPO

SCRIPT = """
import gc, os, signal, sys
from tag_jax import interrupts
if sys.argv[1] == "ignored":
  signal.signal(signal.SIGINT, signal.SIG_IGN)
interrupts.install(lambda: os._exit(42))
if sys.argv[1] == "ignored":
  os.kill(os.getpid(), signal.SIGINT)
  interrupts.raise_if_received()
  print("ignored stays ignored")
  sys.exit(0)
def swallowing_callback(phase, info):  # as JAX's: an interrupt raised in it is only printed
  if phase == "start":
    os.kill(os.getpid(), signal.SIGINT)
gc.callbacks.append(swallowing_callback)
gc.collect()
gc.callbacks.remove(swallowing_callback)
print("swallowed")
try:
  interrupts.raise_if_received()
except KeyboardInterrupt:
  print("raised again")
os.kill(os.getpid(), signal.SIGINT)  # a second one: exit_now at once
print("not reached")
"""


def run(mode):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_swallowed_interrupt_is_raised_again_and_a_second_one_exits_at_once():
    proc = run("default")
    assert proc.stdout.split() == ["swallowed", "raised", "again"], proc.stderr
    assert "KeyboardInterrupt" in proc.stderr  # what Python printed for the swallowed one
    assert proc.returncode == 42


def test_an_ignored_sigint_stays_ignored():
    proc = run("ignored")
    assert proc.returncode == 0 and proc.stdout.strip() == "ignored stays ignored", proc.stderr
