"""How often a watch may sample and write, so that its cost stays a small part of training.

A sampled step (activation statistics) and a flush window's host work (the store, the
spike rule) cost about the same few milliseconds whatever the step takes: on a 40 ms step
every 50 steps is under 1% of the time, on a 1 ms step the same schedule costs ~10%. With
``sample_every="auto"`` and ``flush_every="auto"`` (the defaults) the pacer keeps the
nominal 50 steps as the *shortest* interval and stretches it on short steps so that each
of the two stays under ``BUDGET`` of the training time: the next sampled step comes when
``steps_since >= max(50, min(sample_cost / (BUDGET * step_time), 200))``; windows are
still copied out every 50 steps (one device copy), but their host work is done for
several windows at once: the next write comes when the last write's cost is ``BUDGET``
of the time since it. A write costs a fixed part (the transaction, the rules' pass) and a
part per window; when the part per window alone is over ``BUDGET`` of a window's time
(steps of a millisecond), the waits grow write after write up to the longest interval,
where the fixed part is shared by the most windows.
Neither stretches past ``MAX_STRETCH`` nominal intervals (200 steps) or ``MAX_SECONDS`` of
training, whichever is longer: the latency of the verdicts stays bounded, in steps on
steps of 5 ms and more, in time on shorter ones (a second of training: up to 1,000 steps
of a millisecond).
A number given explicitly (``sample_every=5``) is kept exactly: no pacing.

Costs are measured on the host with ``time.perf_counter`` (no device synchronisation):
the step time as the time between two steps' starts, an exponential moving average; a
sampled step's cost as its excess over that average plus the host time spent judging it;
a flush's cost as the host time of writing its windows.
"""

from __future__ import annotations

import math
import time
from typing import Literal

AUTO_EVERY = 50
"""The nominal interval of ``"auto"``: what ``sample_every=50``/``flush_every=50`` do on
steps long enough that sampling and writing cost under ``BUDGET`` of the time."""
BUDGET = 0.005
"""Design choice: each of sampling and writing may take up to 0.5% of the training time
(docs/benchmarks.md measures the watch at 1.02-1.04x on 40-110 ms CPU steps, where this
never binds, and the small-step cost it bounds)."""
MAX_STRETCH = 4
"""The longest interval ``"auto"`` stretches to, in nominal intervals (200 steps), on
steps of 5 ms and more: a unit that dies is still seen within four nominal sampled steps
(the sampled step that finds it suspicious, and its second look two steps later), and a
spike's or NaN's verdict is written within 200 steps. Design choice (docs/benchmarks.md,
"Watch verdicts")."""
MAX_SECONDS = 1.0
"""On steps shorter than 5 ms (``MAX_SECONDS / (MAX_STRETCH * 50)``) the longest interval
is a second of training instead: the latency of a verdict is bounded in wall time there.
Design choice, measured (docs/benchmarks.md, "Steps of a millisecond"): a sampled step
and the judging after it cost 4-7 ms next to a 1 ms step, so sampling every 200 steps
alone costs such a run 2-4%."""
RECHECK = 16
"""Steps between two evaluations of a stretched sampling interval (the step time it rests
on moves slowly); the first look at each interval is at its nominal end, exactly."""
EMA = 0.9  # weight of the past in the step-time average (about ten steps of memory)
OUTLIER = 4.0
"""A step that took longer than this many average steps enters the average as this many:
a pause between steps (an evaluation, a checkpoint, the data loader) would otherwise
make the next hundred steps look long, and sample and write them as if they were. A
lasting change is still followed, by a factor 1.3 per step."""

Every = int | Literal["auto"] | None  # sample_every: "auto", a number of steps, or never
FlushEvery = int | Literal["auto"]


class Pacer:
    """The schedule of one watch's sampled steps and host writes (see the module doc)."""

    def __init__(self, sample_every: Every, flush_every: FlushEvery):
        self.auto_sample = sample_every == "auto"
        self.auto_flush = flush_every == "auto"
        self.sample_every: int | None = (
            AUTO_EVERY if sample_every == "auto" else sample_every)
        self.flush_every: int = AUTO_EVERY if flush_every == "auto" else flush_every
        self.step_time: float | None = None  # seconds, EMA
        self.sample_cost = 0.0  # seconds, the last sampled step's
        self.flush_cost = 0.0  # seconds per window, the last write's
        self._last_start: float | None = None
        self._excess = 0.0  # the sampled step's time over a typical step's
        self._last_sample = 0  # step of the last sampled step
        self._next_look = 0  # the next step whose sampling is worked out (auto)
        self._write_after = 0.0  # perf_counter time of the next write (auto)

    # -- the step ---------------------------------------------------------------------
    def step_started(self, sampled: bool) -> None:
        """A step's optimizer step begins; ``sampled``: its forward and backward ran with
        the taps armed, so its duration is not a typical step's but a sample's cost."""
        if not (self.auto_sample or self.auto_flush):
            return  # a fixed schedule needs no clock
        now = time.perf_counter()
        if self._last_start is not None:
            took = now - self._last_start
            if sampled:
                self._excess = max(0.0, took - (self.step_time or took))
            elif self.step_time is None:
                self.step_time = took
            else:  # a pause (evaluation, a checkpoint) counts as at most OUTLIER steps
                took = min(took, OUTLIER * self.step_time)
                self.step_time = EMA * self.step_time + (1 - EMA) * took
        self._last_start = now

    def exclude(self, seconds: float) -> None:
        """Host work of the watch's own (a write, a judgement), not part of a step's time."""
        if self._last_start is not None:
            self._last_start += seconds

    # -- sampled steps ----------------------------------------------------------------
    def sample_due(self, step: int) -> bool:
        every = self.sample_every
        if every is None:
            return False
        if not self.auto_sample:
            return step % every == 0
        if step == 0:
            return True
        if step < self._next_look:
            return False  # most steps
        since = step - self._last_sample
        interval = max(every, min(self._stretch(self.sample_cost), self._longest(every)))
        if since >= interval:
            return True
        self._next_look = step + min(interval - since, RECHECK)
        return False

    def sampled(self, step: int, collected: float) -> None:
        """Step ``step`` was sampled; ``collected``: host seconds queueing its numbers."""
        self._last_sample = step
        self._next_look = step + (self.sample_every or 0)
        self.sample_cost = self._excess + collected
        self._excess = 0.0
        self.exclude(collected)

    def judged(self, seconds: float) -> None:
        """Host seconds spent judging a sample after its step (part of its cost)."""
        self.sample_cost += seconds
        self.exclude(seconds)

    # -- host writes ------------------------------------------------------------------
    def write_due(self) -> bool:
        """Whether copied-out windows should be written now (one clock read)."""
        return not self.auto_flush or time.perf_counter() >= self._write_after

    def wrote(self, windows: int, seconds: float) -> None:
        """``windows`` windows were written in ``seconds`` of host time."""
        self.flush_cost = seconds / max(windows, 1)
        # the next write when this one's cost is BUDGET of the time since it (see the
        # module doc: more windows a write when one window alone is over the budget)
        wait = seconds / BUDGET
        if self.step_time is not None:  # never longer than the longest interval
            wait = min(wait, self._longest(self.flush_every) * self.step_time)
        self._write_after = time.perf_counter() + wait
        self.exclude(seconds)

    def _longest(self, every: int) -> int:
        """The longest interval, in steps: ``MAX_STRETCH`` nominal ones or ``MAX_SECONDS``
        of steps, whichever is longer."""
        steps = MAX_STRETCH * every
        if self.step_time:
            steps = max(steps, math.floor(MAX_SECONDS / self.step_time))
        return steps

    def _stretch(self, cost: float) -> int:
        """Steps over which ``cost`` seconds stay under ``BUDGET`` of the training time."""
        if self.step_time is None or self.step_time <= 0:
            return 0
        return math.ceil(cost / (BUDGET * self.step_time))
