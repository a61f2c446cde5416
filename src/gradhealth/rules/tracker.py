"""Which findings make one incident, and how it ended: a state machine fed once per flush.

``Tracker.add`` takes each finding as the watch records it, ``Tracker.observe`` each
flush window's per-step losses (host numbers, no device work). Findings below "warning"
open nothing; an information spike only lengthens an incident it continues. A warning
or worse joins an incident when it is

- the same condition again (same kind and module: a severity that rose);
- the same kind of step event (``incident.EVENT_KINDS``) within ``GAP_STEPS`` of its last
  anomalous step: consecutive anomalous steps are one event;
- anything whose onset lies within ``FOLLOW_STEPS`` of it while it is open: what followed
  (units that died, NaN, a loss that left its level) or what it grew from. An incident is
  open from its onset to its last anomalous step, and as long as the sampled statistics
  still find a condition of it (units still dead: ``present``);

and opens a new incident otherwise. Once the loss has been seen ``SETTLE_STEPS`` past an
event's last anomalous step, the median loss there is compared with the median over the
``SETTLE_STEPS`` before its onset: it came back when within twice that level or within
``RECOVERED_FRACTION`` of the run's progress above it (docs/science.md#training-time-verdicts).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import numpy as np

from gradhealth.rules import divergence, incident
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import EVENT_KINDS, Incident, onset_of

GAP_STEPS = 5
"""Design choice: anomalous steps up to 5 apart are one event (the ten steps after the
benchmark's bad batch spike on and off)."""
FOLLOW_STEPS = 100
"""Design choice: what begins within 100 steps of an incident is part of it: two sampled
steps at the nominal sample_every=50, the latency of a dead-unit verdict. Where the
sampled steps lie further apart (the ``"auto"`` pacing on short steps), twice the widest
interval between them (``Tracker.sampled_every``)."""
SETTLE_STEPS = 50
"""Design choice: the loss levels compared before an event and after it."""
RECOVERED_FRACTION = 0.05
"""Design choice: a loss within 5% of the run's progress (first level minus the level
before) of where it was, or within twice it, came back."""
HISTORY_STEPS = 1000
"""Logged losses kept on the host to find those levels (8 kB)."""


@dataclass
class _Case:
    number: int
    members: list[Finding]
    steps: list[int | None]  # where each member was recorded
    onsets: dict[str, int]
    reported: dict[str, int | None]
    end: int
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    recovered: bool | None = None  # None: not settled, or no loss to compare
    settled: bool = False
    open_until: int = -1  # the last step it was seen going on (its conditions present)

    @property
    def onset(self) -> int:
        return min(self.onsets.values())

    def keys(self) -> set[tuple[str, str]]:
        return {(f.kind, f.module) for f in self.members if f.kind not in EVENT_KINDS}

    def settles(self) -> bool:
        return self.members[0].kind in ("spike", "divergence", "nonfinite")


class Tracker:
    """The incidents of one run so far (see the module doc)."""

    def __init__(self) -> None:
        self._cases: list[_Case] = []
        self._dirty: set[int] = set()
        self._history: deque[tuple[int, float]] = deque(maxlen=HISTORY_STEPS)
        self._initial: list[float] = []  # the run's first logged losses
        self._last = -1  # the last step observed
        self.follow = FOLLOW_STEPS  # steps: what begins this close to an incident joins it

    def sampled_every(self, steps: int) -> None:
        """Two sampled steps were ``steps`` apart: what follows an incident may be seen
        up to two such intervals after it (``FOLLOW_STEPS`` at least)."""
        self.follow = max(self.follow, 2 * steps)

    # -- feeding ---------------------------------------------------------------------
    def add(self, finding: Finding, step: int | None, now: int | None = None) -> None:
        """A finding recorded at ``step``, reported when the watch was at step ``now``."""
        at = step if step is not None else 0
        if finding.severity == "info":
            case = self._continued(finding, at)
            if case is not None and finding.kind == "spike":
                case.end = max(case.end, at)
                case.open_until = max(case.open_until, at)
                self._dirty.add(case.number)
            return
        onset = onset_of(finding, step)
        case = self._same(finding) or self._continued(finding, at) or self._near(onset)
        if case is None:
            case = _Case(len(self._cases) + 1, [], [], {}, {}, at)
            self._cases.append(case)
        case.open_until = max(case.open_until, at)
        case.onsets[finding.kind] = min(case.onsets.get(finding.kind, onset), onset)
        pairs = sorted([*zip(case.members, case.steps), (finding, step)],
                       key=lambda p: case.onsets[p[0].kind])  # the earliest leads
        case.members, case.steps = [f for f, _ in pairs], [s for _, s in pairs]
        case.reported.setdefault(finding.kind, now if now is not None else at)
        if finding.kind in EVENT_KINDS:  # a condition found later does not lengthen it
            case.end = max(case.end, at)
        self._dirty.add(case.number)

    def present(self, step: int, keys: Collection[tuple[str, str]]) -> None:
        """The sampled statistics of ``step`` still find these (kind, module) conditions:
        an incident holding one stays open (and one led by a condition lasts) to there."""
        for case in self._cases:
            if case.keys() & set(keys) and step > case.open_until:
                case.open_until = step
                if not case.settles():
                    case.end = max(case.end, step)
                self._dirty.add(case.number)

    def observe(self, steps: Iterable[int] | np.ndarray,
                losses: Iterable[float | None] | np.ndarray) -> None:
        """One flush window's steps and logged losses (None or NaN: not logged)."""
        self.feed(*divergence.finite(steps, losses))

    def feed(self, at: list[int], values: list[float], last: int) -> None:
        """``observe`` for the window's finite losses and their steps already picked out
        (``divergence.finite``), and its last step."""
        self._last = max(self._last, last)
        self._history.extend(zip(at, values))
        self._initial.extend(values[:divergence.BLOCK_STEPS - len(self._initial)])
        for case in self._cases:
            if case.settles() and not case.settled and self._last >= case.end + SETTLE_STEPS:
                self._settle(case)

    @property
    def last(self) -> int:
        """The last step observed (-1 before any)."""
        return self._last

    @property
    def initial(self) -> float | None:
        """The run's first loss level: the median of its first logged losses."""
        return statistics.median(self._initial) if self._initial else None

    def losses(self, first: int, stop: int) -> list[float]:
        """The logged finite losses of steps ``first`` to ``stop - 1`` still held."""
        return [v for s, v in self._history if first <= s < stop]

    # -- reading ---------------------------------------------------------------------
    def incidents(self) -> list[Incident]:
        """Every incident so far, in order of onset."""
        return sorted((self._build(c) for c in self._cases), key=lambda i: (i.onset, i.number))

    def changed(self) -> list[Incident]:
        """The incidents opened or changed since the last call (for the store)."""
        out = [self._build(c) for c in self._cases if c.number in self._dirty]
        self._dirty.clear()
        return out

    # -- grouping --------------------------------------------------------------------
    def _same(self, finding: Finding) -> _Case | None:
        if finding.kind in EVENT_KINDS:
            return None
        key = (finding.kind, finding.module)
        return next((c for c in reversed(self._cases) if key in c.keys()), None)

    def _continued(self, finding: Finding, at: int) -> _Case | None:
        if finding.kind not in EVENT_KINDS:
            return None
        return next((c for c in reversed(self._cases)
                     if finding.kind in c.onsets and c.onset <= at <= c.end + GAP_STEPS), None)

    def _near(self, onset: int) -> _Case | None:
        return next((c for c in reversed(self._cases)
                     if c.onset - self.follow <= onset <= c.open_until + self.follow), None)

    # -- outcome ---------------------------------------------------------------------
    def _settle(self, case: _Case) -> None:
        onset, end = case.onset, case.end
        before = [v for s, v in self._history if onset - SETTLE_STEPS <= s < onset]
        after = [v for s, v in self._history if end < s <= end + SETTLE_STEPS]
        case.settled = True
        if before and after:  # else no loss logged around it (or only NaN after)
            b, a = statistics.median(before), statistics.median(after)
            initial = self.initial if self.initial is not None else b
            case.before, case.after = {"loss": b}, {"loss": a}
            case.recovered = a <= b + max(abs(b), RECOVERED_FRACTION * (initial - b))
        self._dirty.add(case.number)

    def _build(self, case: _Case) -> Incident:
        return incident.build(case.number, case.members, case.onsets, case.reported,
                              case.end, case.before, case.after,
                              case.recovered if case.settled else None, case.settled,
                              case.steps)
