"""tag_jax.interrupts: the command lines' SIGINT and SIGTERM handlers, in a fresh process each (they
are global)."""

import subprocess
import sys

import pytest
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


TERM_SCRIPT = """
import os, signal, sys, time
from tag_jax import interrupts
mode = sys.argv[1]
if mode == "ignored":
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
interrupts.GRACE_SECONDS = 1.0
interrupts.install(lambda: os._exit(42), lambda: os._exit(43))
def term():
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.01)  # the handler runs at the next bytecode
if mode in ("outside", "ignored"):
  term()
  print("still running", interrupts.termination_requested(), flush=True)
  sys.exit(0)
with interrupts.saving_on_termination():
  print("before", interrupts.termination_requested(), flush=True)
  term()
  print("flagged", flush=True)
  if mode == "boundary":
    assert interrupts.termination_requested()  # the loop now saves: no countdown any more
    time.sleep(3 * interrupts.GRACE_SECONDS)
    print("saved", flush=True)
    sys.exit(0)
  if mode == "second":
    term()
    print("after the second", flush=True)
  time.sleep(3 * interrupts.GRACE_SECONDS)  # no step boundary: the grace countdown ends it
  print("not reached", flush=True)
"""


def run_term(mode):
    return subprocess.run(
        [sys.executable, "-c", TERM_SCRIPT, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sigterm_outside_a_saving_loop_exits_at_once():
    proc = run_term("outside")
    assert proc.returncode == 43 and proc.stdout == "", (proc.stdout, proc.stderr)


def test_sigterm_inside_a_saving_loop_waits_for_the_step_boundary():
    proc = run_term("boundary")
    assert proc.stdout.split() == ["before", "False", "flagged", "saved"], proc.stderr
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("mode", ["grace", "second"])
def test_sigterm_without_a_step_boundary_in_the_grace_time_or_twice_exits(mode):
    proc = run_term(mode)
    assert proc.stdout.split() == ["before", "False", "flagged"], (proc.stdout, proc.stderr)
    assert proc.returncode == 43


def test_an_ignored_sigterm_stays_ignored():
    proc = run_term("ignored")
    assert proc.returncode == 0 and proc.stdout.split() == ["still", "running", "False"]
