"""Ctrl-C for the command lines, which the training loop also checks.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread is, and one raised
inside a garbage-collection callback (JAX registers one) is only printed: the run would go on.
`install` makes the first SIGINT raise as usual and also remember it, so that
`raise_if_received` (before a command's job starts, before each autotune candidate and every
training step) raises again; a second SIGINT calls the command's `exit_now` at once. Without
`install` (a library user's own process), nothing changes and `raise_if_received` never raises.
"""

import signal
from typing import Callable

_received = False


def install(exit_now: Callable[[], None]) -> None:
    """The handler above for SIGINT, unless SIGINT is not Python's default (e.g. ignored, as in a
    non-interactive shell's background job, or the caller's own handler): that stays."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def on_interrupt(signum, frame):
        del signum, frame
        global _received
        if _received:
            exit_now()
        _received = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)


def raise_if_received() -> None:
    """KeyboardInterrupt if an interrupt came since `install` (even one that was swallowed)."""
    if _received:
        raise KeyboardInterrupt
