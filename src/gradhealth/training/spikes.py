"""Spikes on their way to a finding: found by the detector at a flush (or by the guard at
the step), blamed on a module once their window's per-module norms are on the host, and
judged once the ``LOOK_STEPS`` losses after them have been seen (``rules.spike``: a
spike is a warning only when the loss rose after it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradhealth.rules import spike as spike_rule
from gradhealth.rules.finding import Finding
from gradhealth.rules.tracker import Tracker
from gradhealth.training.rows import Notes


def detected(detector: spike_rule.Detector, notes: Notes, global_norm: np.ndarray,
             finite: np.ndarray, nonfinite: int, loss: np.ndarray, logged: np.ndarray,
             losses: tuple[list[int], list[float]]) -> list[spike_rule.Spike]:
    """The detector's spikes in the window of ``notes``, over the steps the GradScaler did
    not skip: their ``finite`` global norms (``nonfinite``: how many are not) and
    ``logged`` finite losses (``losses``: those steps and losses as Python numbers)."""
    steps, (at, values) = notes.step, losses
    norms: tuple[Sequence[int], list[float]] = (steps.tolist(), global_norm.tolist())
    if notes.amp_skips:
        finite, logged = finite & ~notes.amp, logged & ~notes.amp
        at, values = steps[logged].tolist(), loss[logged].tolist()
    if notes.amp_skips or nonfinite:
        norms = steps[finite].tolist(), global_norm[finite].tolist()
    return detector.feed("global_norm", *norms) + detector.feed("loss", at, values)


@dataclass
class _Waiting:
    step: int
    spikes: list[spike_rule.Spike]
    culprit: tuple[str, float] | None
    skipped: bool
    clipped: bool


class Spikes:
    def __init__(self) -> None:
        self._found: list[tuple[spike_rule.Spike, bool]] = []  # (spike, skipped by the guard)
        self._waiting: list[_Waiting] = []

    def add(self, found: list[spike_rule.Spike], skipped: bool) -> None:
        self._found.extend((s, skipped) for s in found)

    def window(self, steps: np.ndarray, layer_norms: np.ndarray, modules: list[str],
               clipped: set[int]) -> int:
        """The spikes of the window of ``steps`` (per-module norms ``layer_norms``), blamed
        and set to wait for the losses after them; how many steps spiked."""
        last = int(steps[-1]) if len(steps) else -1
        by_step: dict[int, list[spike_rule.Spike]] = {}
        skipped_steps = set()
        for spike, skipped in self._found:
            if spike.step <= last:
                by_step.setdefault(spike.step, []).append(spike)
                if skipped:
                    skipped_steps.add(spike.step)
        self._found = [(s, k) for s, k in self._found if s.step > last]  # a later window's
        for step, spikes in by_step.items():
            rows = np.flatnonzero(steps == step)  # the window's row of the step, if any
            culprit = None
            if len(rows) and any(s.series == "global_norm" for s in spikes):
                culprit = spike_rule.blame(layer_norms, int(rows[-1]), modules)
            self._waiting.append(_Waiting(step, spikes, culprit, step in skipped_steps,
                                          step in clipped))
        return len(by_step)

    def judged(self, tracker: Tracker, final: bool = False) -> list[tuple[Finding, int]]:
        """Findings for the spikes whose ``LOOK_STEPS`` steps after ``tracker`` has seen
        (``final``: all of them, with the losses there are), in step order."""
        look = spike_rule.LOOK_STEPS
        due = [w for w in self._waiting if final or w.step + look <= tracker.last]
        self._waiting = [w for w in self._waiting if w not in due]
        out = []
        for w in sorted(due, key=lambda w: w.step):
            around = (tracker.losses(w.step - look, w.step),
                      tracker.losses(w.step + 1, w.step + 1 + look))
            out.append((spike_rule.finding(w.spikes, w.culprit, w.skipped, w.clipped, around,
                                           tracker.initial), w.step))
        return out
