"""The numbers an HTML report draws from a run store: which statistic, which layers, which steps.

Pure functions of a ``runs.Run``; no HTML, no plotting. ``gh.watch`` records
``weight_grad_norm`` every step for each module that owns parameters, and
``grad_rms`` / ``grad_norm`` (of dL/d(output)) with the activation statistics on sampled
steps; a store written by hand may hold other names, so the choice reads ``Run.stats``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from gradhealth.store.reader import Run

if TYPE_CHECKING:  # plots needs matplotlib; the live page reads this module without it
    from gradhealth.report.plots import Steps

# dL/d(output) is the signal that vanishes with depth (weight-gradient norms of a Glorot
# ReLU net stay flat while dL/dx falls 2^-14.5: docs/science.md#the-trap-flat-weight-
# gradients), so it is preferred; the weight-gradient norm is recorded every step, so it
# makes the denser heatmap.
OUTPUT_GRAD_STATS = ("grad_rms", "grad_norm")
WEIGHT_GRAD_STATS = ("weight_grad_norm", "param_grad_norm")
STAT_LABEL = {"grad_rms": "RMS of dL/d(output)", "grad_norm": "|dL/d(output)|",
              "weight_grad_norm": "|dL/dW| (per module)", "param_grad_norm": "|dL/dW|"}
QUANTILE_STATS = ("out_q02", "out_q15", "out_q50", "out_q85", "out_q98")
FLOW_WINDOW = 10  # the flow of a run: median over the last this-many recorded steps


def label(stat: str) -> str:
    return STAT_LABEL.get(stat, stat)


def heatmap_stats(run: Run) -> list[str]:
    """Up to two statistics worth a layer-by-step heatmap: an output-gradient one and a
    weight-gradient one when present; else any statistic named like a gradient; else the
    first recorded one."""
    firsts = [next((s for s in group if s in run.stats), None)
              for group in (OUTPUT_GRAD_STATS, WEIGHT_GRAD_STATS)]
    chosen = [s for s in firsts if s is not None]
    if not chosen:
        chosen = [s for s in run.stats if "grad" in s][:1] or list(run.stats[:1])
    return chosen


def param_layers(run: Run) -> list[str] | None:
    """Modules that own parameters, as ``gh.watch`` records them in ``meta["modules"]``."""
    modules = run.meta.get("modules")
    if isinstance(modules, list) and all(isinstance(m, str) for m in modules):
        return modules
    return None


def tied_layers(run: Run) -> dict[str, str]:
    """Modules holding a parameter another module owns (GPT-2's ``lm_head`` holds
    ``transformer.wte``'s weight): holder -> owner, from ``meta["tied"]``."""
    tied = run.meta.get("tied")
    if not isinstance(tied, dict):
        return {}
    return {k: v for k, v in tied.items() if isinstance(k, str) and isinstance(v, str)}


def layer_matrix(run: Run, stat: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``run.layer_stat(stat)`` without the steps where nothing was recorded, restricted to
    the modules that hold parameters when the store says which they are (sampled
    statistics cover every module, containers and activations included). A module that
    holds a tied parameter is one of them: measured itself where the statistic is per
    module, and given its owner's column where the statistic is per parameter (the
    weight-gradient norm of one shared tensor)."""
    steps, names, values = run.layer_stat(stat)
    keep_rows = np.isfinite(values).any(axis=1) if values.size else np.zeros(len(steps), bool)
    steps, values = steps[keep_rows], values[keep_rows]
    owners, tied = param_layers(run), tied_layers(run)
    if owners is not None:
        holders = set(owners) | set(tied)
        cols = [j for j, n in enumerate(names) if n in holders]
        if cols:
            names, values = [names[j] for j in cols], values[:, cols]
        extra = [(h, names.index(o)) for h, o in tied.items() if h not in names and o in names]
        if extra and stat in WEIGHT_GRAD_STATS:
            names = names + [h for h, _ in extra]
            values = np.concatenate([values, values[:, [j for _, j in extra]]], axis=1)
    return steps, names, values


def median(values: np.ndarray) -> float:
    """``np.median`` that does not overflow: the middle pair is averaged at half scale (the
    mean of two values near 1e308 is inf in float64; halving and doubling are exact)."""
    return float(np.median(values * 0.5)) * 2.0


def recent_median(values: np.ndarray, window: int = FLOW_WINDOW) -> list[float | None]:
    """Per column, the median of the finite values in the last ``window`` rows that have any
    (None where a column has none)."""
    if values.size == 0:
        return [None] * (values.shape[1] if values.ndim == 2 else 0)
    rows = values[np.isfinite(values).any(axis=1)][-window:]
    out: list[float | None] = []
    for col in rows.T:
        finite = col[np.isfinite(col)]
        out.append(median(finite) if finite.size else None)
    return out


def quantile_rows(run: Run) -> tuple[list[str], list[tuple[float, ...] | None]] | None:
    """Per-layer activation percentiles of the last sampled step, when the store has them
    (statistics named ``out_q02`` ... ``out_q98``)."""
    if not all(q in run.stats for q in QUANTILE_STATS):
        return None
    columns = [run.layer_stat(q) for q in QUANTILE_STATS]
    names = columns[0][1]
    if any(c[1] != names for c in columns) or not len(columns[0][0]):
        return None
    # the last step that recorded percentiles, and only the layers that have them: a module
    # that is not an activation keeps no empty slot on the axis
    recorded = np.isfinite(columns[0][2]).any(axis=1)
    if not recorded.any():
        return None
    last = [c[2][int(np.flatnonzero(recorded)[-1])] for c in columns]
    rows = [tuple(float(v[j]) for v in last) for j in range(len(names))]
    kept = [(n, r) for n, r in zip(names, rows) if not all(math.isnan(v) for v in r)]
    if not kept:
        return None
    return ([n for n, _ in kept],
            [r if all(math.isfinite(v) for v in r) else None for _, r in kept])


def clip_threshold(run: Run, given: float | None = None) -> float | None:
    """The clip threshold: ``given``, else ``meta["clip_threshold"]``, else a ``max_norm=``
    in the recorded clipper description; None when unknown (adaptive clippers have none)."""
    if given is not None:
        return float(given)
    value = run.meta.get("clip_threshold")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    config = run.meta.get("config")
    text = config.get("clip") if isinstance(config, dict) else None
    match = re.search(r"max_norm=([0-9.eE+-]+)", text) if isinstance(text, str) else None
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def _column(run: Run, name: str) -> np.ndarray | None:
    if name not in run.steps:
        return None
    col = np.asarray(run.steps[name], dtype=np.float64)
    missing = run.steps.missing(name)
    return None if len(col) == 0 or missing.all() else col


def steps_view(run: Run, threshold: float | None) -> Steps:
    """The per-step scalars ``plots.global_norm_png`` draws."""
    from gradhealth.report.plots import Steps

    t = run.steps
    step = np.asarray(t["step"], dtype=np.int64)
    skipped = set(step[np.asarray(t["skipped"]) > 0].tolist()) | {s.step for s in run.skipped}
    clipped = _column(run, "clipped")
    return Steps(step=step, global_norm=np.asarray(t["global_norm"], dtype=np.float64),
                 loss=_column(run, "loss"), clip_pre_norm=_column(run, "clip_pre_norm"),
                 clipped=clipped, nonfinite=np.asarray(t["nonfinite"]),
                 skipped_steps=sorted(skipped), clip_threshold=threshold,
                 clipped_before=clipped_before(run))


def clipped_before(run: Run) -> float | None:
    """The threshold of a clip applied before the watch recorded the norm (the Hugging
    Face Trainer's ``max_grad_norm``: ``meta["clipped_before_record"]``), None if none."""
    value = run.meta.get("clipped_before_record")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def summary(run: Run) -> dict[str, Any]:
    """The run in a few numbers (None where not recorded)."""
    t = run.steps
    step = np.asarray(t["step"])
    loss = _column(run, "loss")
    finite_loss = loss[np.isfinite(loss)] if loss is not None else np.zeros(0)
    norm = np.asarray(t["global_norm"], dtype=np.float64)
    finite_norm = norm[np.isfinite(norm)]
    clipped = _column(run, "clipped")
    bound = clipped[np.isfinite(clipped)] if clipped is not None else np.zeros(0)
    return {
        "steps recorded": len(step),
        "step range": f"{int(step[0])} – {int(step[-1])}" if len(step) else None,
        "first loss": float(finite_loss[0]) if finite_loss.size else None,
        "last loss": float(finite_loss[-1]) if finite_loss.size else None,
        "lowest loss": float(finite_loss.min()) if finite_loss.size else None,
        "median global norm": median(finite_norm) if finite_norm.size else None,
        "last global norm": float(norm[-1]) if len(norm) else None,
        "non-finite steps": int((np.asarray(t["nonfinite"]) > 0).sum()),
        "skipped steps": len(steps_view(run, None).skipped_steps),
        "clipping bound": (f"on {bound.mean():.1%} of {bound.size} steps"
                           if bound.size else None),
    }
