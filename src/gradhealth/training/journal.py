"""The host side of a watched run: findings so far, and one flush window into the store.

The watch hands the journal host-side facts as they happen (a step ended, a step was
skipped, a sampled step's per-module numbers, a spike the guard saw) and, once per
flush window, the window's numbers copied from the device buffer. The journal turns
them into store rows (``training.rows``), findings (deduplicated: a finding about the
same kind and module is recorded again only when its severity rises), the loss curve's
verdicts (``rules.divergence``), incidents (``rules.tracker``) and counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gradhealth.measure.layer import LayerStats
from gradhealth.measure.params import ParamLayout
from gradhealth.rules import amp as amp_rule
from gradhealth.rules import divergence, examples, producer, run_rules
from gradhealth.rules import spike as spike_rule
from gradhealth.rules.finding import SEVERITY_ORDER, Finding
from gradhealth.rules.tracker import Tracker
from gradhealth.store.writer import RunStore
from gradhealth.training import rows as store_rows
from gradhealth.training.spikes import Spikes, detected
from gradhealth.training.storage import Storage
from gradhealth.training.updates import judged as judged_updates
from gradhealth.training.window import WINDOW_SAMPLES, merge

MAX_EVENT_FINDINGS = 100
"""Spike and non-finite findings are one per event; past this many of a kind and
severity, only the counts (and the store's skipped table) keep growing."""


@dataclass(slots=True)
class StepNote:
    step: int
    wall_time: float
    lr: float | None
    skipped: str | None  # None, "guard" or "amp"
    loss_logged: bool
    clipped: bool  # a clipper ran this step
    update: bool  # the update and weight norms were measured this step


class PendingSample(Protocol):
    """A sampled step's numbers on their way to the host (``training.sampler.Sample``)."""

    def ready(self) -> bool: ...

    def result(self) -> tuple[dict[str, LayerStats], dict[str, float], dict[str, Any]]: ...


class Journal:
    def __init__(self, store: RunStore | None, layout: ParamLayout,
                 detector: spike_rule.Detector, guarded: bool, window: int = WINDOW_SAMPLES):
        self.storage = Storage(store)  # the store, until it cannot be written
        self.layout = layout  # the layout of the window being written (``flush``)
        self.modules = list(layout.modules)  # every weight_grad_norm layer of the run
        self.detector = detector
        self.guarded = guarded
        self.findings: list[Finding] = []
        self.finding_steps: list[int | None] = []
        self.counts = {"steps": 0, "skipped": 0, "amp_skipped": 0, "nonfinite_steps": 0,
                       "spikes": 0, "samples": 0}
        self.last: dict[str, float | None] = {"loss": None, "global_norm": None}
        self.samples: deque[dict[str, LayerStats]] = deque(maxlen=window)
        self.dead: dict[str, float] = {}
        self.recent: int | None = None  # samples the dead-unit/saturation verdict rests on
        self.tracker = Tracker()
        self._last_sampled: int | None = None  # the step of the last sampled step
        self.trend = divergence.Trend()
        self.now = 0  # the latest step noted: when a finding is reported
        self._stuck = False
        self.second_look = False  # a sampled batch asks for another sample at once
        self._severity: dict[tuple[str, str], int] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._seen: set[tuple[str, str, int | None]] = set()
        self._notes: list[StepNote] = []
        self._spikes = Spikes()
        self._skips: list[tuple[int, str, str | None]] = []
        self._new: list[tuple[Finding, int | None]] = []
        self._layer_rows: list[tuple[int, dict[str, LayerStats], dict[str, float]]] = []
        self._unjudged: list[tuple[int, PendingSample]] = []
        self.amp_diverged = False
        self._unguarded_nonfinite = False

    # -- facts as they happen ------------------------------------------------------
    def add(self, finding: Finding, step: int | None) -> None:
        """Record a finding unless the same (kind, module) is already known at this severity."""
        key = (finding.kind, finding.module)
        level = SEVERITY_ORDER[finding.severity]
        if finding.kind in ("spike", "nonfinite"):
            events = self._events.get((finding.kind, finding.severity), 0)
            if events >= MAX_EVENT_FINDINGS or (finding.kind, finding.module, step) in self._seen:
                return  # the guard and the sampled step's rules may name the same event
            self._seen.add((finding.kind, finding.module, step))
            self._events[(finding.kind, finding.severity)] = events + 1
        elif self._severity.get(key, -1) >= level:
            return
        self._severity[key] = level
        self.findings.append(finding)
        self.finding_steps.append(step)
        self._new.append((finding, step))
        self.tracker.add(finding, step, self.now)

    def note(self, note: StepNote) -> None:
        self._notes.append(note)
        self.now = note.step

    def pending_skips(self) -> int:
        """Guard skips of steps noted but not flushed yet."""
        return sum(n.skipped == "guard" for n in self._notes)

    def skip(self, step: int, reason: str, module: str | None) -> None:
        self._skips.append((step, reason, module))

    def spikes(self, found: list[spike_rule.Spike], skipped: bool) -> None:
        self._spikes.add(found, skipped)

    def sample(self, step: int, sample: PendingSample) -> None:
        """A sampled step's numbers, on their way to the host: stored at the next flush,
        judged by ``judge``.

        Judging (median over the window, the probe's rules) is host work; the watch runs
        it at a later step, once the numbers have landed, while the GPU is busy with that
        step's queued kernels.
        """
        self.counts["samples"] += 1
        if self._last_sampled is not None:
            self.tracker.sampled_every(step - self._last_sampled)
        self._last_sampled = step
        self._unjudged.append((step, sample))

    def pending(self) -> bool:
        """Whether sampled steps are waiting to be judged."""
        return bool(self._unjudged)

    def judge(self, wait: bool = True) -> int:
        """Run the probe's rules over the window for every sample not judged yet
        (``wait=False``: only those whose numbers have reached the host); how many."""
        judged = 0
        while self._unjudged and (wait or self._unjudged[0][1].ready()):
            judged += 1
            step, sample = self._unjudged.pop(0)
            layers, dead, meta = sample.result()
            batch_dead = meta.get("batch_dead") or {}
            self._layer_rows.append((step, layers, batch_dead))
            self.samples.append(layers)
            self.dead, self.recent = dead, meta.get("span_samples")
            found = run_rules(self.window_layers(), meta)
            for f in found:
                self.add(f, step)
            self.tracker.present(step, {(f.kind, f.module) for f in found
                                        if SEVERITY_ORDER[f.severity] >= 1})
            reported = {k for k, level in self._severity.items() if level >= 1}
            self.second_look |= examples.second_look(layers, batch_dead,
                                                     meta.get("batch_size"), reported)
        if judged:
            self._check_stuck()
        return judged

    def _check_stuck(self) -> None:
        """A run flat since its start, once a gradient pathology explains it."""
        if self._stuck or not self.trend.flat():
            return
        # a cause seen while the loss was flat: not one found after the losses judged (the
        # writes may lag the samples), which may be a consequence of what came later
        cause = next((f for f, at in zip(self.findings, self.finding_steps)
                      if f.kind in divergence.CAUSES and SEVERITY_ORDER[f.severity] >= 1
                      and (at or 0) <= self.trend.last), None)
        if cause is None:
            return
        heads = [s for s in self.window_layers().values() if s.role == "layer" and s.fan_out]
        classes = max(heads, key=lambda s: s.order).fan_out if heads else None
        found = divergence.stuck(self.trend, cause, classes, self.now)
        if found is not None:
            self._stuck = True
            self.add(found, self.now)

    def relayout(self, layout: ParamLayout) -> None:
        """The parameters a step updates changed (``ParamLayout.stale``): the store's list of
        weight_grad_norm layers grows by the new ones (windows say their own layout)."""
        new = [m for m in layout.modules if m not in self.modules]
        self.modules.extend(new)
        if new:
            self.storage.set_meta("modules", self.modules)

    def window_layers(self) -> dict[str, LayerStats]:
        return merge(list(self.samples), self.dead, self.recent)

    # -- once per flush window -----------------------------------------------------
    def flush(self, drained: Mapping[str, np.ndarray], rows: int,
              layout: ParamLayout | None = None) -> None:
        """The oldest ``rows`` steps noted, whose numbers are ``drained``, one column per
        parameter of ``layout`` (the layout the window was recorded under).

        The window's steps go to the rules and the store as arrays, and the finite values
        a rule folds one by one are picked out once, with numpy: host work per window,
        not per step."""
        if layout is not None:
            self.layout = layout
        self.judge()
        notes = store_rows.Notes.of(self._notes[:rows])
        del self._notes[:rows]
        steps, n = notes.step, len(notes.step)
        grad = drained["grad"][:n]
        global_norm = np.sqrt(np.add.reduce(np.square(grad), axis=1))  # np.sum's reduction
        finite = np.isfinite(global_norm)
        bad = ~finite & ~notes.amp if notes.amp_skips else ~finite  # the scaler's don't count
        nonfinite = int(np.count_nonzero(bad))
        layer_norms = self.layout.per_module(grad)
        loss = drained["loss"][:n]
        logged = notes.logged & np.isfinite(loss)
        losses = steps[logged].tolist(), loss[logged].tolist(), notes.last
        self._count(notes, nonfinite, global_norm, loss)
        if not self.guarded:
            self.spikes(detected(self.detector, notes, global_norm, finite, nonfinite, loss,
                                 logged, losses[:2]), skipped=False)
            if nonfinite:
                self._report_unguarded_nonfinite(steps, bad, grad)
        if notes.amp_skips:
            self._report_amp(steps, notes.amp, drained["amp_scale"][:n])
        clipped: set[int] = set()
        if notes.clips:
            clipped = set(steps[notes.clipped & (drained["clipped"][:n] == 1)].tolist())
        self.counts["spikes"] += self._spikes.window(steps, layer_norms, self.layout.modules,
                                                     clipped)
        for finding, at in judged_updates(steps, drained, self.layout):
            self.add(finding, at)
        for f in self.trend.feed(*losses):
            self.add(f, f.evidence["step"])
        self._check_stuck()
        self.tracker.feed(*losses)
        self.decide()
        window = store_rows.Window(self.layout, notes, drained, global_norm, layer_norms,
                                   self._layer_rows, self._new, self._skips, [])
        # one transaction: a kill keeps all of it or none
        self.storage.window(int(steps[-1]) if n else None, lambda store: store_rows.write(
            store, _with_incidents(window, self.tracker)))
        self._new, self._skips, self._layer_rows = [], [], []

    def _count(self, notes: store_rows.Notes, nonfinite: int, global_norm: np.ndarray,
               loss: np.ndarray) -> None:
        self.counts["steps"] += len(notes.step)
        self.counts["skipped"] += notes.guard_skips
        self.counts["amp_skipped"] += notes.amp_skips
        self.counts["nonfinite_steps"] += nonfinite
        if len(notes.step):
            self.last["global_norm"] = float(global_norm[-1])
        if notes.last_logged >= 0:
            self.last["loss"] = float(loss[notes.last_logged])

    def decide(self, final: bool = False) -> None:
        """Judge the spikes whose losses after them have been seen (``final``: all)."""
        for f, step in self._spikes.judged(self.tracker, final):
            self.add(f, step)

    def finish(self) -> None:
        """The run ended: judge the spikes still waiting, and write them."""
        self.decide(final=True)
        if self._new:
            window = store_rows.Window(self.layout, store_rows.Notes.of([]), {}, *(
                np.zeros(0),) * 2, [], self._new, [], [])
            self.storage.window(None, lambda store: store_rows.write_events(
                store, _with_incidents(window, self.tracker)))
            self._new = []

    def _report_unguarded_nonfinite(self, steps, bad: np.ndarray, grad: np.ndarray) -> None:
        """The first of the ``bad`` steps (there is one), once per run."""
        if self._unguarded_nonfinite:
            return
        self._unguarded_nonfinite = True  # once per run: later steps only propagate it
        i = int(np.flatnonzero(bad)[0])
        self.add(producer.unguarded(int(steps[i]), self.layout.per_module(grad[i]).tolist(),
                                    self.layout.modules, int(bad.sum())), int(steps[i]))

    def _report_amp(self, steps, amp: np.ndarray, scale: np.ndarray) -> None:
        for i in np.flatnonzero(amp):
            s = float(scale[i])
            self.skip(int(steps[i]), f"amp_overflow: GradScaler skipped the step at loss "
                                     f"scale {s:g}", None)
            if amp_rule.diverged(s) and not self.amp_diverged and not self.guarded:
                self.amp_diverged = True
                self.add(amp_rule.divergence(int(steps[i]), s), int(steps[i]))


def _with_incidents(window: store_rows.Window, tracker: Tracker) -> store_rows.Window:
    """``window`` with the incidents opened or changed since the last write (asked for
    inside the write: without a store there is nothing to ask for)."""
    window.incidents = tracker.changed()
    return window
