"""Divergence and a run stuck from the start, read from the loss curve.

A spike is one step; divergence is the loss leaving its level *for good*. The loss of a
minibatch is noisy, so the level is the median of each block of ``BLOCK_STEPS`` logged,
finite losses. The run's reference is the best block so far (``best``) and its scale the
progress made from the first block (``initial``): a block is *above* when it gave back
``LOST_FRACTION`` of that progress,

    median > best + LOST_FRACTION * max(initial - best, abs(best)),

(the ``abs(best)`` term covers a run that never made progress: then it must rise by a
quarter of its own level). The loss has left its level when ``SUSTAIN_BLOCKS`` blocks in a
row are above; the onset is the first of them. A spike the run recovers from is back
under the line within a few blocks; a run that diverges, or died at a spike and sits at
chance since, is not (docs/science.md#training-time-verdicts).

*Stuck from the start*: after ``STUCK_STEPS`` logged steps the best block is still within
``STUCK_PROGRESS`` of the first. Flat loss alone is not a verdict (a transformer under a
long warm-up, a hard task); the watch reports it only with a gradient pathology the
sampled statistics see (``CAUSES``), and names the chance level ln(C) when the first loss
is within ``CHANCE_TOLERANCE`` of it for the model's C outputs.

``Trend`` carries the state from one flush window to the next; everything else is a pure
function.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

BLOCK_STEPS = 10
"""Design choice: the loss level is the median of 10 logged steps (one odd batch in ten
cannot move it)."""
LOST_FRACTION = 0.25
"""Design choice: a block that gave back a quarter of the run's progress is above its
level (measured: the benchmark's 21 healthy runs give back at most 7.4% after their first
50 steps, a CNN under Adam on Fashion-MNIST; docs/benchmarks.md)."""
SUSTAIN_BLOCKS = 5
"""Design choice: 50 logged steps above the line is "for good": one sampled step at the
default sample_every=50, five times the 10 steps a spike's verdict waits for."""
STUCK_STEPS = 50
"""Design choice: one sampled step at the default sample_every=50 (a flat loss alone is
no verdict: a pathology the samples see must explain it)."""
STUCK_PROGRESS = 0.1
"""Design choice: less than 10% below the first block after ``STUCK_STEPS`` is no progress
(the benchmark's healthy runs are 17-92% below by then, but a slow RNN only 4-6%: flat,
and silent because no pathology explains it)."""
CHANCE_TOLERANCE = 0.1
"""A first loss within 10% of ln(C) is at chance (cross-entropy of a uniform guess)."""
CAUSES = ("vanishing", "exploding", "saturation", "dead_units")
"""Findings of the sampled statistics that explain a run stuck from the start."""


def finite(steps: Iterable[int] | np.ndarray, losses: Iterable[float | None] | np.ndarray
           ) -> tuple[list[int], list[float], int]:
    """The steps and losses of a window whose loss is finite (None: not logged), as
    Python numbers, and the last step of all (-1: none); as ``zip``, the shorter of the
    two sets the length."""
    at = np.asarray(steps if isinstance(steps, (np.ndarray, Sequence)) else list(steps),
                    dtype=np.int64)
    values = np.asarray(losses if isinstance(losses, (np.ndarray, Sequence)) else list(losses),
                        dtype=np.float64)  # None -> NaN
    n = min(len(at), len(values))
    at, values = at[:n], values[:n]
    keep = np.isfinite(values)
    return at[keep].tolist(), values[keep].tolist(), int(at.max()) if n else -1


def threshold(best: float, initial: float) -> float:
    """The block median above which the loss has left ``best`` (see the module doc)."""
    return best + LOST_FRACTION * max(initial - best, abs(best))


@dataclass
class Trend:
    """The loss curve so far, in blocks: fed once per flush window (``observe``)."""

    initial: float | None = None  # the first block's median
    best: float | None = None
    best_step: int | None = None
    logged: int = 0  # finite losses seen
    last: int = -1  # the last step seen
    above: list[tuple[int, float]] = field(default_factory=list)  # (first step, median)
    diverged: bool = False
    _block: list[float] = field(default_factory=list)
    _first: int | None = None  # step of the open block's first loss

    def observe(self, steps: Iterable[int] | np.ndarray,
                losses: Iterable[float | None] | np.ndarray) -> list[Finding]:
        """Feed one window's losses (None or non-finite: not logged, skipped); the
        divergence findings it completes."""
        return self.feed(*finite(steps, losses))

    def feed(self, at: list[int], values: list[float], last: int) -> list[Finding]:
        """``observe`` for the window's finite losses and their steps already picked out
        (``finite``), and its last step: they join the open block a block's worth at a
        time, so the window costs a step per closed block, not per loss."""
        self.last = max(self.last, last)
        self.logged += len(values)
        found = []
        i = 0
        while i < len(values):
            if self._first is None:
                self._first = at[i]
            taken = values[i:i + BLOCK_STEPS - len(self._block)]
            self._block.extend(taken)
            i += len(taken)
            if len(self._block) >= BLOCK_STEPS:
                f = self._close(at[i - 1])
                if f is not None:
                    found.append(f)
        return found

    def _close(self, step: int) -> Finding | None:
        median, first = statistics.median(self._block), self._first
        self._block, self._first = [], None
        assert first is not None  # set with the block's first loss
        if self.initial is None or self.best is None:
            self.initial = self.best = median
            self.best_step = first
            return None
        if median <= threshold(self.best, self.initial):
            self.above = []
            self.diverged = False  # re-armed once the loss is back at its level
            if median < self.best:
                self.best, self.best_step = median, first
            return None
        self.above.append((first, median))
        if len(self.above) < SUSTAIN_BLOCKS or self.diverged:
            return None
        self.diverged = True
        return divergence(self.above, self.best, self.best_step, self.initial, step)

    def flat(self) -> bool:
        """Whether the run has made no progress since its start (``STUCK_STEPS`` on)."""
        if self.initial is None or self.best is None or self.logged < STUCK_STEPS:
            return False
        return self.best >= self.initial - STUCK_PROGRESS * abs(self.initial)


def divergence(above: Sequence[tuple[int, float]], best: float, best_step: int | None,
               initial: float, step: int) -> Finding:
    """The loss left its level at ``above[0]``'s step and stayed above until ``step``."""
    onset, now = above[0][0], above[-1][1]
    peak = max(m for _, m in above)
    line = threshold(best, initial)
    return Finding(
        kind="divergence", module="", severity="critical",
        evidence={"onset_step": onset, "step": step, "loss_before": best,
                  "loss_before_step": best_step, "loss_now": now, "loss_peak": peak,
                  "loss_initial": initial, "threshold": line, "blocks_above": len(above),
                  "block_steps": BLOCK_STEPS},
        prescription=Remedy("diverged", params={"step": onset}),
        message=(f"the loss left its level at step {onset} and has not come back: block "
                 f"median {now:.4g} against {best:.4g} before (line {line:.4g}: a quarter "
                 f"of the progress from {initial:.4g} given back) for {len(above)} blocks "
                 f"of {BLOCK_STEPS} steps"))


def chance(initial: float, classes: int | None) -> float | None:
    """ln(C) when ``initial`` is within ``CHANCE_TOLERANCE`` of it, else None."""
    if classes is None or classes < 2:
        return None
    level = math.log(classes)
    return level if abs(initial - level) <= CHANCE_TOLERANCE * level else None


def stuck(trend: Trend, cause: Finding, classes: int | None, step: int) -> Finding | None:
    """A run that made no progress since its start, explained by ``cause`` (a finding of
    a kind in ``CAUSES``); None while the run is not flat."""
    if not trend.flat() or trend.initial is None or trend.best is None:
        return None
    level = chance(trend.initial, classes)
    where = (f"at chance, ln({classes}) = {level:.3g}" if level is not None
             else f"at its first level {trend.initial:.4g}")
    return Finding(
        kind="stuck", module=cause.module, severity="critical",
        evidence={"onset_step": 0, "step": step, "loss_initial": trend.initial,
                  "loss_best": trend.best, "steps_logged": trend.logged,
                  "progress_needed": STUCK_PROGRESS, "chance": level, "classes": classes,
                  "cause": cause.kind},
        prescription=cause.prescription, remedy=cause.remedy, modules=cause.modules,
        message=(f"the loss has stayed {where} for {trend.logged} steps (best "
                 f"{trend.best:.4g}); the sampled statistics show why: {cause.kind} in "
                 f"`{cause.module or '<model>'}`"))
