"""What a run prints while it trains: a progress line now and then, one short line per epoch.

Every metric goes to metrics.jsonl and TensorBoard (tag_jax.metric_writing); the console shows
them too only with --verbosity=1.
"""

import time
from typing import Callable, Optional

from absl import logging

PROGRESS_EVERY_SECONDS = 60.0


def duration(seconds: float) -> str:
    """'45s', '12m 05s', '3h 07m': the two largest units of a non-negative duration."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


class Progress:
    """Called after every training step (the step count so far): every `every_steps` steps it
    writes steps_per_sec (since the previous write) and uptime (seconds since it was created) to
    `writer`; at most every `every_seconds` it logs one line, 'step 120/800 (15%), 21.3 steps/s,
    about 32s of training left'. The first call (its step compiled the step function) only starts
    the clock."""

    def __init__(
        self,
        total_steps: int,
        writer,
        every_steps: int,
        every_seconds: float = PROGRESS_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._total, self._writer, self._clock = total_steps, writer, clock
        self._every_steps, self._every_seconds = every_steps, every_seconds
        self._started = clock()
        self._written: Optional[tuple] = None  # (step, time) of the last write (or first call)
        self._logged: Optional[tuple] = None  # (step, time) of the last line (or first call)

    def __call__(self, step: int) -> None:
        now = self._clock()
        if self._written is None:
            self._written = self._logged = (step, now)
            return
        if step % self._every_steps == 0 and step > self._written[0]:
            rate = (step - self._written[0]) / max(now - self._written[1], 1e-9)
            self._writer.write_scalars(step, {"steps_per_sec": rate, "uptime": now - self._started})
            self._written = (step, now)
        if now - self._logged[1] >= self._every_seconds and step > self._logged[0]:
            rate = (step - self._logged[0]) / (now - self._logged[1])
            logging.info("%s", progress_line(step, self._total, rate))
            self._logged = (step, now)


def progress_line(step: int, total_steps: int, steps_per_second: float) -> str:
    """'step 120/800 (15%), 21.3 steps/s, about 32s of training left' (steps_per_second > 0)."""
    left = (total_steps - step) / steps_per_second
    return (
        f"step {step}/{total_steps} ({100 * step / total_steps:.0f}%), "
        f"{steps_per_second:.1f} steps/s, about {duration(left)} of training left"
    )


def epoch_line(
    epoch: int, num_epochs: int, train_loss: Optional[float], total_error: float, history
) -> str:
    """'epoch 3/8: train loss 1.234, validation Total Error 45.67 (best 44.10, epoch 2)':
    `train_loss` the mean summed task loss of the epoch's steps (those this process ran; None:
    none), `history` the earlier epochs' records {'epoch', 'val_total_error', ...}."""
    best_epoch, best = min(
        [(r["epoch"], r["val_total_error"]) for r in history] + [(epoch, total_error)],
        key=lambda entry: entry[1],
    )
    loss = "" if train_loss is None else f"train loss {train_loss:.3f}, "
    return (
        f"epoch {epoch}/{num_epochs}: {loss}validation Total Error {total_error:.2f} "
        f"(best {best:.2f}, epoch {best_epoch})"
    )
