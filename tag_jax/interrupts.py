"""Ctrl-C (SIGINT) and termination (SIGTERM) for the command lines, which the training loop checks.

Ctrl-C: Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread is, and one
raised inside a garbage-collection callback (JAX registers one) is only printed: the run would go
on. `install` makes the first SIGINT raise as usual and also remember it, so that
`raise_if_received` (before a command's job starts, before each autotune candidate and every
training step) raises again; a second SIGINT calls the command's `exit_interrupted` at once.

SIGTERM (what schedulers and preemptible machines send before they stop a job): while a training
loop runs inside `saving_on_termination()`, the first SIGTERM only sets a flag; the loop sees it
at its next step boundary (`termination_requested`), saves a checkpoint and raises `Terminated`,
which the command line reports in one line with exit status TERMINATED_EXIT_CODE (143 = 128 + 15,
the shell's status of a process ended by SIGTERM). If no step boundary comes within GRACE_SECONDS
(a long evaluation), the process exits with that status without a new checkpoint; so does a
SIGTERM outside such a loop (loading data, between a study's stages: nothing unsaved) and a
second SIGTERM. Python runs signal handlers between bytecodes, so a SIGTERM during a compilation
takes effect when it ends. Either way the re-run resumes from the last checkpoint.

Without `install` (a library user's own process), nothing changes: `raise_if_received` never
raises and `termination_requested` is never true.
"""

import contextlib
import signal
import threading
from typing import Callable, Optional

TERMINATED_EXIT_CODE = 143
GRACE_SECONDS = 20.0

_received = False
_terminated = False
_loops_saving = 0  # training loops inside saving_on_termination()
_grace_timer: Optional[threading.Timer] = None


class Terminated(BaseException):
    """Raised by the training loop after it checkpointed on SIGTERM; like KeyboardInterrupt, not
    an Exception, so that no `except Exception` (a study stage, a writer's clean-up) absorbs it."""

    exit_code = TERMINATED_EXIT_CODE


def install(
    exit_interrupted: Callable[[], None], exit_terminated: Callable[[], None] = None
) -> None:
    """The handlers above for SIGINT and (given exit_terminated) SIGTERM, each unless the signal's
    disposition is not Python's default (e.g. ignored, as SIGINT in a non-interactive shell's
    background job, or the caller's own handler): that stays."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:

        def on_interrupt(signum, frame):
            del signum, frame
            global _received
            if _received:
                exit_interrupted()
            _received = True
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_interrupt)
    if exit_terminated and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def on_terminate(signum, frame):
            del signum, frame
            global _terminated, _grace_timer
            if _terminated or not _loops_saving:
                exit_terminated()
            _terminated = True
            _grace_timer = threading.Timer(GRACE_SECONDS, exit_terminated)
            _grace_timer.daemon = True
            _grace_timer.start()

        signal.signal(signal.SIGTERM, on_terminate)


def raise_if_received() -> None:
    """KeyboardInterrupt if an interrupt came since `install` (even one that was swallowed)."""
    if _received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def saving_on_termination():
    """While inside, a SIGTERM waits (up to GRACE_SECONDS) for the loop to checkpoint and raise
    Terminated instead of ending the process at once."""
    global _loops_saving
    _loops_saving += 1
    try:
        yield
    finally:
        _loops_saving -= 1


def termination_requested() -> bool:
    """True once a SIGTERM came inside `saving_on_termination`; stops the grace countdown, since
    the caller now saves a checkpoint and raises Terminated."""
    if _terminated and _grace_timer is not None:
        _grace_timer.cancel()
    return _terminated
