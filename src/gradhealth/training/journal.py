"""The host side of a watched run: findings so far, and one flush window into the store.

The watch hands the journal host-side facts as they happen (a step ended, a step was
skipped, a sampled step's per-module numbers, a spike the guard saw) and, once per
flush window, the window's numbers copied from the device buffer. The journal turns
them into store rows, findings (deduplicated: a finding about the same kind and
module is recorded again only when its severity rises), and counts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gradhealth.measure.layer import LayerStats
from gradhealth.measure.params import ParamLayout
from gradhealth.rules import amp as amp_rule
from gradhealth.rules import producer, run_rules
from gradhealth.rules import spike as spike_rule
from gradhealth.rules.finding import SEVERITY_ORDER, Finding
from gradhealth.store.writer import RunStore
from gradhealth.training.storage import Storage
from gradhealth.training.updates import judged as judged_updates
from gradhealth.training.window import WINDOW_SAMPLES, merge

SAMPLE_STATS = ("out_rms", "out_std", "grad_rms", "grad_norm", "saturation", "dead_fraction",
                "nonfinite_out", "nonfinite_grad", "attn_logit_max", "attn_entropy_min",
                "attn_entropy_uniform", "log_z", "adam_grad_rms")
"""Per module on sampled steps (``Taps(lean=True)``: the non-finite ones are 0/1 flags;
``dead_fraction`` is over the window of samples that ends at the step)."""
QUANTILE_STATS = ("out_q02", "out_q15", "out_q50", "out_q85", "out_q98")  # stats.QUANTILES
MAX_EVENT_FINDINGS = 100
"""Spike and non-finite findings are one per event; past this many of a kind, only the
counts (and the store's skipped table) keep growing."""


@dataclass
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
        self._severity: dict[tuple[str, str], int] = {}
        self._events: dict[str, int] = {}
        self._seen: set[tuple[str, str, int | None]] = set()
        self._notes: list[StepNote] = []
        self._spikes: list[tuple[spike_rule.Spike, bool]] = []
        self._skips: list[tuple[int, str, str | None]] = []
        self._new: list[tuple[Finding, int | None]] = []
        self._layer_rows: list[tuple[int, dict[str, LayerStats]]] = []
        self._unjudged: list[tuple[int, PendingSample]] = []
        self.amp_diverged = False
        self._unguarded_nonfinite = False

    # -- facts as they happen ------------------------------------------------------
    def add(self, finding: Finding, step: int | None) -> None:
        """Record a finding unless the same (kind, module) is already known at this severity."""
        key = (finding.kind, finding.module)
        level = SEVERITY_ORDER[finding.severity]
        if finding.kind in ("spike", "nonfinite"):
            events = self._events.get(finding.kind, 0)
            if events >= MAX_EVENT_FINDINGS or (finding.kind, finding.module, step) in self._seen:
                return  # the guard and the sampled step's rules may name the same event
            self._seen.add((finding.kind, finding.module, step))
            self._events[finding.kind] = events + 1
        elif self._severity.get(key, -1) >= level:
            return
        self._severity[key] = level
        self.findings.append(finding)
        self.finding_steps.append(step)
        self._new.append((finding, step))

    def note(self, note: StepNote) -> None:
        self._notes.append(note)

    def pending_skips(self) -> int:
        """Guard skips of steps noted but not flushed yet."""
        return sum(n.skipped == "guard" for n in self._notes)

    def skip(self, step: int, reason: str, module: str | None) -> None:
        self._skips.append((step, reason, module))

    def spikes(self, found: list[spike_rule.Spike], skipped: bool) -> None:
        self._spikes.extend((s, skipped) for s in found)

    def sample(self, step: int, sample: PendingSample) -> None:
        """A sampled step's numbers, on their way to the host: stored at the next flush,
        judged by ``judge``.

        Judging (median over the window, the probe's rules) is host work; the watch runs
        it at a later step, once the numbers have landed, while the GPU is busy with that
        step's queued kernels.
        """
        self.counts["samples"] += 1
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
            self._layer_rows.append((step, layers))
            self.samples.append(layers)
            self.dead = dead
            for f in run_rules(self.window_layers(), meta):
                self.add(f, step)
        return judged

    def relayout(self, layout: ParamLayout) -> None:
        """The parameters a step updates changed (``ParamLayout.stale``): the store's list of
        weight_grad_norm layers grows by the new ones (windows say their own layout)."""
        new = [m for m in layout.modules if m not in self.modules]
        self.modules.extend(new)
        if new:
            self.storage.set_meta("modules", self.modules)

    def window_layers(self) -> dict[str, LayerStats]:
        return merge(list(self.samples), self.dead)

    # -- once per flush window -----------------------------------------------------
    def flush(self, drained: Mapping[str, np.ndarray], rows: int,
              layout: ParamLayout | None = None) -> None:
        """The oldest ``rows`` steps noted, whose numbers are ``drained``, one column per
        parameter of ``layout`` (the layout the window was recorded under)."""
        if layout is not None:
            self.layout = layout
        self.judge()
        notes, self._notes = self._notes[:rows], self._notes[rows:]
        n = len(notes)
        steps = np.array([s.step for s in notes], dtype=np.int64)
        grad = drained["grad"][:n]
        global_norm = np.sqrt(np.sum(np.square(grad), axis=1))
        nonfinite = ~np.isfinite(global_norm)
        layer_norms = self.layout.per_module(grad)
        amp = np.array([s.skipped == "amp" for s in notes], dtype=bool)
        logged = np.array([s.loss_logged for s in notes], dtype=bool)
        loss = drained["loss"][:n]
        self._count(notes, nonfinite, amp, global_norm, loss, logged)
        if not self.guarded:
            for i, s in enumerate(notes):
                if not amp[i]:
                    self.spikes(self.detector.observe(int(s.step), {
                        "global_norm": float(global_norm[i]),
                        "loss": float(loss[i]) if logged[i] else None}), skipped=False)
            self._report_unguarded_nonfinite(steps, nonfinite & ~amp, grad)
        self._report_amp(steps, amp, drained["amp_scale"][:n])
        self._report_spikes(steps, layer_norms)
        for finding, at in judged_updates(steps, drained, self.layout):
            self.add(finding, at)
        # one transaction: a kill keeps all of it or none
        self.storage.window(int(steps[-1]) if n else None, lambda store: self._write(
            store, notes, steps, drained, global_norm, nonfinite, layer_norms, loss, logged))
        self._new, self._skips, self._layer_rows = [], [], []

    def _count(self, notes, nonfinite, amp, global_norm, loss, logged) -> None:
        self.counts["steps"] += len(notes)
        self.counts["skipped"] += sum(s.skipped == "guard" for s in notes)
        self.counts["amp_skipped"] += int(amp.sum())
        self.counts["nonfinite_steps"] += int((nonfinite & ~amp).sum())
        if len(notes):
            self.last["global_norm"] = float(global_norm[-1])
        if logged.any():
            self.last["loss"] = float(loss[np.flatnonzero(logged)[-1]])

    def _report_spikes(self, steps: np.ndarray, layer_norms: np.ndarray) -> None:
        row_of = {int(s): i for i, s in enumerate(steps)}
        by_step: dict[int, list[spike_rule.Spike]] = {}
        skipped_steps = set()
        last = int(steps[-1]) if len(steps) else -1
        later = [(s, k) for s, k in self._spikes if s.step > last]  # a later window's
        for spike, skipped in self._spikes:
            if spike.step > last:
                continue
            by_step.setdefault(spike.step, []).append(spike)
            if skipped:
                skipped_steps.add(spike.step)
        for step, spikes in by_step.items():
            row = row_of.get(step)
            culprit = None
            if row is not None and any(s.series == "global_norm" for s in spikes):
                culprit = spike_rule.blame(layer_norms, row, self.layout.modules)
            self.counts["spikes"] += 1
            self.add(spike_rule.finding(spikes, culprit, step in skipped_steps), step)
        self._spikes = later

    def _report_unguarded_nonfinite(self, steps, bad: np.ndarray, grad: np.ndarray) -> None:
        if not bad.any() or self._unguarded_nonfinite:
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

    def _write(self, store: RunStore, notes, steps, drained, global_norm, nonfinite,
               layer_norms, loss, logged) -> None:
        n = len(notes)
        upd_rows = np.array([s.update for s in notes], dtype=bool)
        upd, weight = drained["update"][:n], drained["weight"][:n]
        ratio = np.full(n, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[upd_rows] = (np.sqrt(np.square(upd[upd_rows]).sum(axis=1))
                               / np.sqrt(np.square(weight[upd_rows]).sum(axis=1)))
        clipped = [s.clipped for s in notes]
        lr = drained["lr"][:n]
        store.write_steps({
            "step": steps,
            "loss": [float(v) if ok else None for v, ok in zip(loss, logged)],
            "global_norm": global_norm,
            "update_ratio": [float(v) if ok else None for v, ok in zip(ratio, upd_rows)],
            "lr": [s.lr if s.lr is not None else _none_if_nan(lr[i]) for i, s in enumerate(notes)],
            "nonfinite": nonfinite.astype(np.int64),
            "skipped": [int(s.skipped is not None) for s in notes],
            "clip_pre_norm": [float(v) if c else None
                              for v, c in zip(drained["clip_pre_norm"][:n], clipped)],
            "clipped": [int(v) if c and v == v else None
                        for v, c in zip(drained["clipped"][:n], clipped)],
            "wall_time": [s.wall_time for s in notes],
        })
        modules = self.layout.modules
        if n and modules:
            store.write_layer_stats(steps, modules, ["weight_grad_norm"], layer_norms[:, :, None])
        if upd_rows.any() and modules:
            u, w = self.layout.per_module(upd[upd_rows]), self.layout.per_module(weight[upd_rows])
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.stack([u / w, w], axis=2)
            store.write_layer_stats(steps[upd_rows], modules, ["update_ratio", "weight_norm"],
                                    values)
        for sampled, layers in self._layer_rows:
            names = list(layers)
            rows = [[_num(getattr(layers[m], f)) for f in SAMPLE_STATS]
                    + list(layers[m].out_quantiles or (math.nan,) * len(QUANTILE_STATS))
                    for m in names]
            store.write_layer_stats([sampled], names, SAMPLE_STATS + QUANTILE_STATS, [rows])
        by_step: dict[int | None, list[Finding]] = {}
        for f, at in self._new:
            by_step.setdefault(at, []).append(f)
        for at, found in by_step.items():
            store.write_findings(found, at)
        for skipped, reason, module in self._skips:
            store.write_skipped(skipped, reason, module)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _none_if_nan(value: float) -> float | None:
    return None if value != value else float(value)
