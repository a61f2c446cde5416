"""The store rows of one flush window: steps, per-module norms, sampled statistics,
findings, skipped steps and the incidents that changed, written in the journal's one
transaction (``training.storage``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradhealth.measure.layer import LayerStats
from gradhealth.measure.params import ParamLayout
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import Incident
from gradhealth.store.format import step_table
from gradhealth.store.writer import RunStore

SAMPLE_STATS = ("out_rms", "out_std", "grad_rms", "grad_norm", "saturation", "dead_fraction",
                "nonfinite_out", "nonfinite_grad", "attn_logit_max", "attn_entropy_min",
                "attn_entropy_uniform", "log_z", "adam_grad_rms")
"""Per module on sampled steps (``Taps(lean=True)``: the non-finite ones are 0/1 flags;
``dead_fraction`` is over the span of samples the dead-unit verdict rests on, ending at the
step; ``batch_dead_fraction`` is the sampled batch's own)."""
QUANTILE_STATS = ("out_q02", "out_q15", "out_q50", "out_q85", "out_q98")  # stats.QUANTILES
BATCH_DEAD = "batch_dead_fraction"


@dataclass
class Notes:
    """The fields of a window's ``journal.StepNote`` objects, read in one pass: the steps and
    flags as arrays, the numbers only the store takes as they are, and how many steps
    were skipped, clipped or measured (most windows none: their flags need no look).
    Host work per window, not per step: each array is made in one call."""

    step: np.ndarray  # int64
    wall_times: tuple[float, ...]
    lrs: tuple[float | None, ...]
    logged: np.ndarray  # the loss was logged
    clipped: np.ndarray  # a clipper ran
    update: np.ndarray  # the update and weight norms were measured
    has_lr: np.ndarray  # the note holds a learning rate (a float, NaN or not)
    skipped: np.ndarray  # skipped at all
    amp: np.ndarray  # skipped by the GradScaler
    last_logged: int  # the row of the last logged loss (-1: none)
    guard_skips: int
    amp_skips: int
    clips: int
    updates: int

    @classmethod
    def of(cls, notes: Sequence[Any]) -> Notes:
        n = len(notes)
        steps, walls, lrs, skips, logged, clipped, update = list(zip(*[
            (s.step, s.wall_time, s.lr, s.skipped, s.loss_logged, s.clipped, s.update)
            for s in notes])) or [()] * 7
        amp = [v == "amp" for v in skips] if "amp" in skips else [False] * n
        flags = np.frombuffer(b"".join(bytes(f) for f in (  # bools as bytes: no type to guess
            logged, clipped, update, [v is not None for v in lrs],
            [v is not None for v in skips], amp)), dtype=bool)
        logs, clips, updates, has_lr, skipped, amps = flags.reshape(6, n)
        return cls(np.fromiter(steps, np.int64, n), walls, lrs, logs, clips, updates,
                   has_lr, skipped, amps,
                   n - 1 - logged[::-1].index(True) if True in logged else -1,
                   skips.count("guard"), skips.count("amp"), clipped.count(True),
                   update.count(True))

    @property
    def last(self) -> int:
        """The latest step (-1: none)."""
        return int(self.step.max()) if len(self.step) else -1


@dataclass
class Window:
    """What one flush window writes (numbers already on the host)."""

    layout: ParamLayout
    notes: Notes
    drained: Mapping[str, np.ndarray]
    global_norm: np.ndarray
    layer_norms: np.ndarray
    sampled: Sequence[tuple[int, dict[str, LayerStats], dict[str, float]]]  # step, layers,
    # each rectifier's dead fraction on its batch alone
    findings: Sequence[tuple[Finding, int | None]]
    skipped: Sequence[tuple[int, str, str | None]]
    incidents: Sequence[Incident]


def write(store: RunStore, w: Window) -> None:
    notes, steps, drained = w.notes, w.notes.step, w.drained
    n = len(steps)
    upd_rows = notes.update
    upd, weight = drained["update"][:n], drained["weight"][:n]
    ratio = np.full(n, np.nan)
    if notes.updates:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[upd_rows] = (np.sqrt(np.square(upd[upd_rows]).sum(axis=1))
                               / np.sqrt(np.square(weight[upd_rows]).sum(axis=1)))
    tensor_lr = drained["lr"][:n]  # the learning rate held as a tensor, if any
    clip_flags: list[int | None] = [None] * n  # NULL: no clipper ran
    if notes.clips:
        clipped = drained["clipped"][:n]
        known = notes.clipped & ~np.isnan(clipped)
        flags = np.where(known, clipped, 0).astype(np.int64).astype(object)
        flags[~known] = None
        clip_flags = flags.tolist()
    note_lr = np.array(notes.lrs, dtype=np.float64)  # None -> NaN
    store.insert_steps(step_table(
        steps,
        np.array([drained["loss"][:n], w.global_norm, ratio,
                  np.where(notes.has_lr, note_lr, tensor_lr), drained["clip_pre_norm"][:n]]),
        np.array([notes.logged, np.ones(n, dtype=bool), upd_rows,
                  notes.has_lr | ~np.isnan(tensor_lr), notes.clipped]),
        [(~np.isfinite(w.global_norm)).astype(np.int64).tolist(),
         notes.skipped.astype(np.int64).tolist(), clip_flags],
        np.fromiter(notes.wall_times, np.float64, n)))
    modules = w.layout.modules
    if n and modules:
        store.write_layer_stats(steps, modules, ["weight_grad_norm"], w.layer_norms[:, :, None])
    if notes.updates and modules:
        u = w.layout.per_module(upd[upd_rows])
        wt = w.layout.per_module(weight[upd_rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.stack([u / wt, wt], axis=2)
        store.write_layer_stats(steps[upd_rows], modules, ["update_ratio", "weight_norm"],
                                values)
    for sampled, layers, batch_dead in w.sampled:
        names = list(layers)
        rows = [[_num(getattr(layers[m], f)) for f in SAMPLE_STATS]
                + list(layers[m].out_quantiles or (math.nan,) * len(QUANTILE_STATS))
                + [_num(batch_dead.get(m))] for m in names]
        store.write_layer_stats([sampled], names, SAMPLE_STATS + QUANTILE_STATS + (BATCH_DEAD,),
                                [rows])
    write_events(store, w)


def write_events(store: RunStore, w: Window) -> None:
    """The window's findings, skipped steps and changed incidents (alone at the end of a
    run, for the spikes judged then)."""
    by_step: dict[int | None, list[Finding]] = {}
    for f, at in w.findings:
        by_step.setdefault(at, []).append(f)
    for at, found in by_step.items():
        store.write_findings(found, at)
    for skipped, reason, module in w.skipped:
        store.write_skipped(skipped, reason, module)
    if w.incidents:
        store.write_incidents(w.incidents)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
