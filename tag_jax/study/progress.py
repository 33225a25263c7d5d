"""Where a running study is: one line as each stage starts and ends (stage i of N, time elapsed,
estimated time left), from the stages' estimates (tag_jax.study.estimate) scaled by how long the
stages run so far took."""

import time
from typing import Callable

from tag_jax.console import duration
from tag_jax.study.estimate import time_left


class StudyProgress:
    """The lines of a study's stages, in plan order; `estimates` are the stages' StageEstimates,
    `clock` seconds (the study's elapsed time counts from the progress's creation)."""

    def __init__(self, estimates: list, clock: Callable[[], float] = time.monotonic):
        self._estimates, self._clock = estimates, clock
        self._started = clock()
        self._stage_started = self._started
        self._took, self._skipped = {}, set()

    def _where(self, index: int) -> str:
        estimate = self._estimates[index]
        return f"stage {index + 1}/{len(self._estimates)} {estimate.name} ({estimate.method})"

    def _times(self) -> str:
        left = time_left(self._estimates, self._took, self._skipped)
        return (
            f"{duration(self._clock() - self._started)} elapsed, "
            f"about {duration(left)} left (rough)"
        )

    def skipped(self, index: int) -> str:
        """A stage finished by an earlier run of the study."""
        self._skipped.add(self._estimates[index].name)
        return f"{self._where(index)}: done before, skipped"

    def started(self, index: int) -> str:
        self._stage_started = self._clock()
        return f"{self._where(index)} started: {self._times()}"

    def finished(self, index: int) -> str:
        took = self._clock() - self._stage_started
        self._took[self._estimates[index].name] = took
        return f"{self._where(index)} done in {duration(took)}: {self._times()}"
