"""A wall-clock budget for a whole ``compress`` run, shared out among its training stages.

A lent GPU runs one command for at most 10 minutes, and a run killed at the limit returns nothing
useful, so ``compress --time-budget S`` plans its epochs against the clock instead:

1. Each training stage runs its first epoch as planned and times it.
2. It then keeps as many of its planned epochs as its share of the time left affords; the share is
   proportional to planned epochs, this stage's against those of the stages still to come. Its
   learning-rate steps (50% / 75%) are placed on the new epoch count, so a shortened stage is still
   a whole schedule, only a shorter one.
3. After every epoch it checks the clock again: if one more epoch, plus the minimum epochs of the
   stages still to come, no longer fits, the stage stops there (once its own minimum has run) and is
   marked ``cut_short``. The remaining stages then run their minimum.

``reserve`` seconds are kept back for what follows the training (evaluations, prune, shrink,
tracing and writing the outputs). Stage time measured by a stage is its own: PENNI epochs cost
more than dense ones, and each stage's plan uses its own first epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TimeBudget:
    """A deadline ``seconds`` after ``start`` (now by default), minus ``reserve`` kept for the end.

    Parameters
    ----------
    seconds : float
        The whole run's allowance.
    reserve : float
        Seconds kept back for the work after the last training epoch.
    clock : callable
        Returns seconds; ``time.monotonic`` (tests pass a fake one).
    start : float, optional
        ``clock()`` value the allowance counts from.
    """

    def __init__(self, seconds: float, reserve: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 start: float | None = None) -> None:
        self.clock = clock
        self.deadline = (clock() if start is None else start) + seconds - reserve

    def left(self) -> float:
        """Seconds still available for training (may be negative)."""
        return self.deadline - self.clock()

    def stage_epochs(self, planned: int, done: int, minimum: int, epoch_seconds: float, later_planned: int) -> int:
        """How many epochs in all a stage keeps, ``done`` of them run, each taking ``epoch_seconds``.

        Parameters
        ----------
        planned : int
            The stage's epochs by its schedule.
        done : int
            Epochs already run (and timed).
        minimum : int
            Fewest epochs the stage runs, whatever the clock says.
        epoch_seconds : float
            Measured time of one of its epochs.
        later_planned : int
            Planned epochs of the training stages still to come, which share the time left.

        Returns
        -------
        int
            Between ``max(done, minimum)`` and ``planned``.
        """
        remaining = planned - done
        if remaining <= 0:
            return planned
        share = max(0.0, self.left()) * remaining / (remaining + max(0, later_planned))
        fits = int(share // max(epoch_seconds, 1e-9))
        return max(done, min(minimum, planned), min(planned, done + fits))

    def must_stop(self, epoch_seconds: float, later_minimum: int) -> bool:
        """Whether one more epoch, and then ``later_minimum`` epochs of the stages to come, would overrun."""
        return self.left() < epoch_seconds * (1 + max(0, later_minimum))
