"""What a pretraining run may spend: `max_steps`, `max_minutes` of wall-clock time, or both
(whichever runs out first), and how far the learning-rate decay has come."""

import time
from typing import Callable, Dict, Optional


class Budget:
    """Ticked by each `Trainer.step()`, whichever loop calls it (`Trainer.run` or your own). Time
    counts from the first step (setting up is free), evaluations and saves between steps included,
    on top of what a resumed run had spent. `clock` gives seconds (`time.perf_counter`; tests
    pass their own); `sync` makes data-parallel ranks agree on the time, so they stop together."""

    def __init__(
        self,
        *,
        max_steps: Optional[int],
        max_minutes: Optional[float],
        warmup_steps: int,
        steps: int = 0,
        seconds: float = 0.0,
        warmup_end_seconds: Optional[float] = None,
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[float], float] = float,
    ):
        self.max_steps, self.max_minutes, self.warmup_steps = max_steps, max_minutes, warmup_steps
        self.steps, self.seconds = steps, seconds
        # The time when warmup ended, where a decay over minutes starts.
        self.warmup_end_seconds = warmup_end_seconds
        self.clock, self.sync = clock, sync
        self._started_at: Optional[float] = None  # the clock at the first step of this process
        self._seconds_before = seconds

    def start(self) -> None:
        """Start the clock, if it is not running yet (called as each step begins)."""
        if self._started_at is None:
            self._started_at = self.clock()
        if self.warmup_end_seconds is None and self.steps >= self.warmup_steps:
            self.warmup_end_seconds = self.seconds

    def tick(self, steps: int) -> None:
        """A step has ended, with `steps` optimizer steps taken in all (a skipped step adds none)."""
        self.steps = steps
        seconds = self._seconds_before + self.clock() - self._started_at
        self.seconds = self.sync(seconds) if self.max_minutes is not None else seconds

    @property
    def spent(self) -> bool:
        if self.max_steps is not None and self.steps >= self.max_steps:
            return True
        return self.max_minutes is not None and self.seconds >= 60 * self.max_minutes

    @property
    def decay_progress(self) -> float:
        """How far decay has come, from the end of warmup (0) to the end of the budget (1): of the
        steps, or of the minutes, whichever is further."""
        progress = 0.0
        if self.max_steps is not None:
            progress = (self.steps - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.max_minutes is not None and self.warmup_end_seconds is not None:
            start, end = self.warmup_end_seconds, 60 * self.max_minutes
            progress = max(progress, (self.seconds - start) / max(1e-9, end - start))
        return min(1.0, max(0.0, progress))

    def saved(self) -> Dict[str, Optional[float]]:
        """What --resume needs to continue the budget (the step count is the trainer's)."""
        return {"seconds": self.seconds, "warmup_end_seconds": self.warmup_end_seconds}
