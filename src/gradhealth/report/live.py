"""The live page of a run store: its HTML shell, its static files, and the data it polls.

``gradhealth serve`` (``cli.serve``) serves three kinds of answer, all built here:

- ``page(path)``: the HTML shell; no inline script or style, every resource from the
  server itself (``STATIC``), so the Content-Security-Policy (``CSP``) allows nothing else;
- ``STATIC``: ``live.js`` (ours) and uPlot 1.6.32 (``uPlot.iife.min.js``, ``uPlot.min.css``,
  MIT licence in ``static/uPlot.LICENSE``), vendored in the package: the page draws its
  charts in the browser from numbers, so the server never renders a figure;
- ``LiveRun.payload(after)``: JSON of the steps recorded after ``after``, the incidents,
  the skipped steps and the per-layer views, read through ``gradhealth.store.reader``
  (read-only). The per-layer views (a read of every recorded step) are rebuilt at most
  every ``LAYERS_EVERY_S`` seconds, and only when new steps arrived.
"""

from __future__ import annotations

import html
import math
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth._version import __version__
from gradhealth.errors import StoreError
from gradhealth.report import rundata
from gradhealth.rules.finding import SEVERITY_ORDER
from gradhealth.store.lock import is_being_written
from gradhealth.store.reader import Run, load

STATIC = {"live.js": "text/javascript", "live.css": "text/css",
          "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LAYERS_EVERY_S = 3.0
MAX_COLUMNS = 300  # heatmap columns (steps binned by their median beyond this)
MAX_LAYERS = 150  # heatmap rows (evenly chosen beyond this)
MAX_SKIPPED = 200  # the latest skipped steps listed


def static(name: str) -> bytes:
    """A file the page loads, from the package (only the names in ``STATIC``)."""
    if name not in STATIC:
        raise KeyError(name)
    return (resources.files("gradhealth.report") / "static" / name).read_bytes()


def page(path: Path) -> str:
    name = html.escape(path.name, quote=True)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="gradhealth">
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<title>gradhealth live: {name}</title>
<link rel="stylesheet" href="/static/uPlot.min.css"><link rel="stylesheet" href="/static/live.css">
<script src="/static/uPlot.iife.min.js" defer></script><script src="/static/live.js" defer></script>
</head><body><main>
<header><h1>gradhealth live: <span id="run-name">{name}</span></h1>
<p id="state" class="state">connecting…</p><p id="about" class="small"></p></header>
<section class="numbers">
<div><span class="label">steps</span><span id="steps" class="value">0</span></div>
<div><span class="label">loss</span><span id="loss" class="value">–</span></div>
<div><span class="label">global norm</span><span id="norm" class="value">–</span></div>
<div><span class="label">incidents</span><span id="incident-count" class="value">0</span></div>
<div><span class="label">skipped steps</span><span id="skipped-count" class="value">0</span></div>
</section>
<section><h2>Incidents</h2>
<p class="small">The watch's findings, grouped per kind and module, worst first.</p>
<div id="incidents"><p class="small">None so far.</p></div></section>
<section class="grid">
<figure><h3>Global gradient norm <span class="small">(log; red: skipped or non-finite)</span></h3>
<div id="chart-norm" class="chart"></div></figure>
<figure><h3>Loss</h3><div id="chart-loss" class="chart"></div></figure></section>
<section><h2>Gradient flow per layer</h2>
<p class="small">Median of the last {rundata.FLOW_WINDOW} recorded steps, input layer on the
left, log scale.</p><div id="chart-flow" class="chart"></div></section>
<section><h2>Per-layer heatmaps</h2>
<p class="small">Each layer (input at the top) at each recorded step, log colour scale;
grey: not recorded.</p><div id="heatmaps"></div></section>
<section><h2>Skipped steps</h2><div id="skipped"><p class="small">None.</p></div></section>
<footer>gradhealth {html.escape(__version__)} · read-only view of {name} · updates every
second while the run is written</footer>
</main></body></html>
"""


def _num(value: Any) -> float | None:
    """A JSON number, or None for NaN, inf and missing values."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _column(values: np.ndarray) -> list[float | None]:
    return [_num(v) for v in values.tolist()]


def incidents(run: Run) -> list[dict[str, Any]]:
    """The page's incidents: until the store records incidents of its own, the watch's
    findings grouped per (kind, module), each with its worst severity, how often and
    between which steps it was found, and the latest finding's words."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for finding, step in zip(run.findings, run.finding_steps):
        key = (finding.kind, finding.module)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"kind": finding.kind, "module": finding.module, "count": 0,
                               "severity": finding.severity, "first_step": step}
        g["count"] += 1
        g["last_step"] = step
        if SEVERITY_ORDER[finding.severity] >= SEVERITY_ORDER[g["severity"]]:
            g["severity"] = finding.severity
        g.update(message=finding.message, remedy=finding.remedy,
                 evidence={k: v if isinstance(v, (str, int)) or v is None else _num(v)
                           for k, v in finding.to_dict()["evidence"].items()
                           if isinstance(v, (str, int, float)) or v is None})
    return sorted(groups.values(), key=lambda g: (-SEVERITY_ORDER[g["severity"]],
                                                  g["first_step"] if g["first_step"] is not None
                                                  else -1))


def about(run: Run) -> dict[str, Any]:
    m = run.meta
    command = m["command"] if isinstance(m.get("command"), dict) else {}
    return {"model": m.get("model"), "optimizer": m.get("optimizer"),
            "n_params": m.get("n_params"), "device": m.get("device"), "dtype": m.get("dtype"),
            "script": command.get("script"), "outcome": m.get("outcome")}


def heatmap(run: Run, stat: str) -> dict[str, Any] | None:
    """One layer-by-step view, binned to at most MAX_COLUMNS steps, log10 values."""
    steps, names, values = rundata.layer_matrix(run, stat)
    if not len(steps) or not names:
        return None
    if len(names) > MAX_LAYERS:
        keep = np.unique(np.linspace(0, len(names) - 1, MAX_LAYERS).round().astype(int))
        names, values = [names[i] for i in keep], values[:, keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(values) & (values > 0), np.log10(values), np.nan)
    bins = np.array_split(np.arange(len(steps)), min(MAX_COLUMNS, len(steps)))
    cols, at = [], []
    for b in bins:
        block = logs[b]
        seen = np.isfinite(block)
        filled = np.where(seen, block, 0.0)
        count = seen.sum(axis=0)
        with np.errstate(invalid="ignore"):
            mean = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), np.nan)
        cols.append(mean)
        at.append(int(steps[b[-1]]))
    matrix = np.stack(cols, axis=1)  # layers x columns
    return {"stat": stat, "label": rundata.label(stat), "layers": names, "steps": at,
            "log10": [_column(row) for row in matrix]}


def layers_view(run: Run) -> dict[str, Any]:
    """The gradient flow (median of the last recorded steps per layer) and the heatmaps."""
    maps, flow = [], []
    for stat in rundata.heatmap_stats(run):
        view = heatmap(run, stat)
        if view is None:
            continue
        maps.append(view)
        _, names, values = rundata.layer_matrix(run, stat)
        flow.append({"label": rundata.label(stat), "layers": names,
                     "values": [_num(v) for v in rundata.recent_median(values)]})
    flow = [f for f in flow if f["layers"] == flow[0]["layers"]] if flow else []
    return {"heatmaps": maps, "flow": flow}


class LiveRun:
    """The JSON a live page polls, for the store at ``path`` (thread-safe)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._layers: dict[str, Any] = {"heatmaps": [], "flow": []}
        self._layers_at: tuple[int, float] = (-1, 0.0)  # (last step, when) of that view

    def payload(self, after: int | None = None) -> dict[str, Any]:
        try:
            run = load(self.path, after=after)
        except StoreError as err:  # not created yet, or created but not initialised yet
            if not self.path.exists() or "not a gradhealth run store" in str(err):
                return {"waiting": True, "live": True, "message": "waiting for the run to "
                        "write its store (the first optimizer step)"}
            raise
        t = run.steps
        step = np.asarray(t["step"], dtype=np.int64)
        last = int(step[-1]) if len(step) else after
        outcome = run.meta.get("outcome")
        writing = outcome is None and is_being_written(self.path)
        with self._lock:
            seen, when = self._layers_at
            due = time.monotonic() - when >= LAYERS_EVERY_S or not writing
            if last is not None and last != seen and due:
                self._layers = layers_view(load(self.path, after=None))
                self._layers_at = (last if last is not None else -1, time.monotonic())
            layers = self._layers
        loss = np.asarray(t["loss"], dtype=np.float64)
        return {
            "waiting": False, "live": writing, "outcome": outcome,
            "stopped": outcome is None and not writing,  # its writer ended without closing
            "about": about(run), "last_step": last,
            "steps": {"step": step.tolist(), "global_norm": _column(t["global_norm"]),
                      "loss": _column(loss), "nonfinite": np.asarray(t["nonfinite"]).tolist(),
                      "skipped": np.asarray(t["skipped"]).tolist()},
            "incidents": incidents(run),
            "skipped": [{"step": s.step, "reason": s.reason, "module": s.module}
                        for s in run.skipped[-MAX_SKIPPED:]],
            "n_skipped": len(run.skipped), "layers_at": self._layers_at[0], **layers,
        }
