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
class Window:
    """What one flush window writes (numbers already on the host)."""

    layout: ParamLayout
    notes: Sequence[Any]  # journal.StepNote
    steps: np.ndarray
    drained: Mapping[str, np.ndarray]
    global_norm: np.ndarray
    nonfinite: np.ndarray
    layer_norms: np.ndarray
    loss: np.ndarray
    logged: np.ndarray
    sampled: Sequence[tuple[int, dict[str, LayerStats], dict[str, float]]]  # step, layers,
    # each rectifier's dead fraction on its batch alone
    findings: Sequence[tuple[Finding, int | None]]
    skipped: Sequence[tuple[int, str, str | None]]
    incidents: Sequence[Incident]


def write(store: RunStore, w: Window) -> None:
    n = len(w.notes)
    upd_rows = np.array([s.update for s in w.notes], dtype=bool)
    upd, weight = w.drained["update"][:n], w.drained["weight"][:n]
    ratio = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio[upd_rows] = (np.sqrt(np.square(upd[upd_rows]).sum(axis=1))
                           / np.sqrt(np.square(weight[upd_rows]).sum(axis=1)))
    clipped = [s.clipped for s in w.notes]
    lr = w.drained["lr"][:n]
    store.write_steps({
        "step": w.steps,
        "loss": [float(v) if ok else None for v, ok in zip(w.loss, w.logged)],
        "global_norm": w.global_norm,
        "update_ratio": [float(v) if ok else None for v, ok in zip(ratio, upd_rows)],
        "lr": [s.lr if s.lr is not None else _none_if_nan(lr[i]) for i, s in enumerate(w.notes)],
        "nonfinite": w.nonfinite.astype(np.int64),
        "skipped": [int(s.skipped is not None) for s in w.notes],
        "clip_pre_norm": [float(v) if c else None
                          for v, c in zip(w.drained["clip_pre_norm"][:n], clipped)],
        "clipped": [int(v) if c and v == v else None
                    for v, c in zip(w.drained["clipped"][:n], clipped)],
        "wall_time": [s.wall_time for s in w.notes],
    })
    modules = w.layout.modules
    if n and modules:
        store.write_layer_stats(w.steps, modules, ["weight_grad_norm"], w.layer_norms[:, :, None])
    if upd_rows.any() and modules:
        u = w.layout.per_module(upd[upd_rows])
        wt = w.layout.per_module(weight[upd_rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.stack([u / wt, wt], axis=2)
        store.write_layer_stats(w.steps[upd_rows], modules, ["update_ratio", "weight_norm"],
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


def _none_if_nan(value: float) -> float | None:
    return None if value != value else float(value)
