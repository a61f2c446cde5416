"""The HTML report's figures: pure functions, numbers in, PNG bytes out (matplotlib, Agg).

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``: no global figure registry, no backend switch, nothing left open. Names from
the model are drawn as plain text (``$`` escaped, so a module named ``$x$`` is not math).
Sick layers are drawn in the severity's colour; the others in one neutral blue.

- ``gradient_flow_png``: a value per layer in forward order, log scale (the gradient flow).
- ``heatmap_png``: a layer-by-step statistic from the run store, log colour scale.
- ``distributions_png``: per-layer percentile boxes, the view of Glorot & Bengio 2010,
  Fig. 6 (activation values per layer) drawn from the 2/15/50/85/98th percentiles.
- ``global_norm_png``: the global gradient norm (and loss) over steps, with the clip
  threshold, clipped, skipped and non-finite steps marked.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

SEVERITY_COLOUR = {"critical": "#c62828", "warning": "#ef6c00", "info": "#0277bd"}
HEALTHY = "#1f5fa8"
SERIES_COLOURS = ("#1f5fa8", "#2e7d32", "#6a1b9a", "#455a64")
MAX_TICKS = 40  # at most this many layer names on an axis; the sick ones always shown
MAX_COLUMNS = 600  # a heatmap wider than this many steps is binned (geometric mean)
LABEL_CHARS = 28  # long qualified names keep their tail: "…layers.11.mlp.fc1"
DPI = 100
_RC = {"font.size": 9, "axes.titlesize": 10,
       "axes.spines.top": False, "axes.spines.right": False}


@dataclass(frozen=True)
class Series:
    """One line of a gradient-flow plot: a value per layer, in forward order."""

    label: str
    names: Sequence[str]
    values: Sequence[float | None]
    dashed: bool = False
    sick: Mapping[str, str] | None = None  # this series' flagged layers (default: the plot's)


@dataclass(frozen=True)
class Steps:
    """Per-step scalars for ``global_norm_png`` (NaN where not recorded)."""

    step: np.ndarray
    global_norm: np.ndarray
    loss: np.ndarray | None = None
    clip_pre_norm: np.ndarray | None = None
    clipped: np.ndarray | None = None  # 1.0 clipped, 0.0 not, NaN no clipper
    nonfinite: np.ndarray | None = None
    skipped_steps: Sequence[int] = field(default_factory=tuple)
    clip_threshold: float | None = None


def short(name: str) -> str:
    """A tick label for a qualified module name: the root is ``<model>``, long names keep
    their tail (the tail names the layer; the head is the same for all of them)."""
    name = name or "<model>"
    name = name if len(name) <= LABEL_CHARS else "…" + name[-(LABEL_CHARS - 1):]
    return plain(name)


def plain(text: str) -> str:
    """``text`` drawn literally: an unescaped pair of ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no Software/date metadata: the same numbers give the same bytes
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float, rows: int = 1, **kw) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False, **kw)[:, 0]
    return fig, list(axes)


def _positive(values: Sequence[float | None]) -> np.ndarray:
    """float array, NaN for None / non-finite / non-positive (unplottable on a log axis)."""
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    arr[~np.isfinite(arr) | (arr <= 0)] = np.nan
    return arr


def _layer_ticks(ax, names: Sequence[str], sick: Mapping[str, str], axis: str = "x") -> None:
    """Label up to MAX_TICKS layers (every k-th plus every sick one), sick labels coloured."""
    n = len(names)
    step = max(1, math.ceil(n / MAX_TICKS))
    shown = sorted(set(range(0, n, step)) | {i for i, m in enumerate(names) if m in sick})
    labels = [short(names[i]) for i in shown]
    if axis == "x":
        ax.set_xticks(shown, labels, rotation=60 if n > 6 else 0,
                      ha="right" if n > 6 else "center", rotation_mode="anchor")
        ticks = ax.get_xticklabels()
    else:
        ax.set_yticks(shown, labels)
        ticks = ax.get_yticklabels()
    for tick, i in zip(ticks, shown):
        if names[i] in sick:
            tick.set_color(SEVERITY_COLOUR[sick[names[i]]])
            tick.set_fontweight("bold")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _nonfinite(ax, x: float, text: str) -> None:
    """A red mark at the top of the axes above ``x`` (data), outside the layout."""
    ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top",
                color=SEVERITY_COLOUR["critical"], fontweight="bold", annotation_clip=True,
                in_layout=False)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def gradient_flow_png(series: Sequence[Series], *, sick: Mapping[str, str] | None = None,
                      ylabel: str = "gradient norm", title: str = "") -> bytes:
    """Values per layer (input first) on a log axis; layers in ``sick`` (name -> severity)
    get a shaded band and a marker in the severity's colour; non-finite values an × on top.

    Several series share the layer axis by position (depth); tick labels come from the
    first series' names.
    """
    sick = dict(sick or {})
    with rc_context(_RC):
        width = min(max(9.0, 0.22 * max((len(s.names) for s in series), default=0) + 4), 16)
        fig, (ax,) = _figure(width, 4.2)
        base = series[0].names if series else []
        drawn, flagged = False, set()
        for k, s in enumerate(series):
            x = np.arange(len(s.values))
            y = _positive(s.values)
            colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
            if np.isfinite(y).any():
                drawn = True
                ax.plot(x, y, "--" if s.dashed else "-", color=colour, lw=1.5, marker="o",
                        ms=3.5, label=plain(s.label))
            for i, v in enumerate(s.values):
                if v is not None and not math.isfinite(v):
                    _nonfinite(ax, i, "× non-finite")
            own = sick if s.sick is None else s.sick
            for i, name in enumerate(s.names):
                if name in own and np.isfinite(y[i]):
                    ax.plot(i, y[i], "o", ms=8, mfc=SEVERITY_COLOUR[own[name]], mec="black",
                            mew=0.6, zorder=5)
                    flagged.add(own[name])
        for i, name in enumerate(base):
            if name in sick:
                ax.axvspan(i - 0.5, i + 0.5, color=SEVERITY_COLOUR[sick[name]], alpha=0.12,
                           lw=0)
        ax.set_xlim(-0.6, max(len(base) - 0.4, 0.6))
        if not drawn:
            _no_data(ax, "no finite positive values to plot")
        else:
            ax.set_yscale("log")
            ax.set_ylabel(ylabel + " (log)")
            ax.set_xlabel("layer, input first")
            ax.grid(True, which="major", axis="y", alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            for severity in ("critical", "warning", "info"):
                if severity in flagged:
                    handles.append(ax.plot([], [], "o", ms=8, mec="black", mew=0.6,
                                           mfc=SEVERITY_COLOUR[severity])[0])
                    labels.append(f"flagged: {severity}")
            ax.legend(handles, labels, loc="best", fontsize=8, framealpha=0.85)
        _layer_ticks(ax, list(base), sick)
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


def _binned(steps: np.ndarray, logv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average log-values over groups of consecutive steps: at most MAX_COLUMNS columns."""
    if len(steps) <= MAX_COLUMNS:
        return steps, logv
    edges = np.linspace(0, len(steps), MAX_COLUMNS + 1).astype(int)
    finite = np.isfinite(logv)
    sums = np.add.reduceat(np.where(finite, logv, 0.0), edges[:-1], axis=0)
    counts = np.add.reduceat(finite.astype(np.int64), edges[:-1], axis=0)
    out = np.full(sums.shape, np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return steps[edges[:-1]], out


def _edges(x: np.ndarray) -> np.ndarray:
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5], dtype=np.float64)
    mid = (x[1:] + x[:-1]) / 2.0
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def heatmap_png(steps: Sequence[int], names: Sequence[str], values: np.ndarray, *,
                sick: Mapping[str, str] | None = None, label: str = "gradient RMS",
                title: str = "") -> bytes:
    """``values[i, j]`` (layer ``j`` at ``steps[i]``) as colour, log scale, input layer at
    the top; NaN, zero and non-finite cells are grey. Long runs are binned by step."""
    sick = dict(sick or {})
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).reshape(len(steps), len(names))
    with rc_context(_RC):
        height = min(max(3.0, 1.6 + 0.16 * len(names)), 14.0)
        fig, (ax,) = _figure(11.0, height)
        positive = np.isfinite(values) & (values > 0)
        if not positive.any():
            _no_data(ax, f"no finite positive {label} recorded")
        else:
            logv = np.full(values.shape, np.nan)
            np.log10(values, out=logv, where=positive)
            cols, logv = _binned(steps, logv)
            grid = np.ma.masked_invalid(10.0 ** logv.T)
            lo, hi = float(np.nanmin(10.0 ** logv)), float(np.nanmax(10.0 ** logv))
            cmap = _cmap()
            mesh = ax.pcolormesh(_edges(cols), np.arange(len(names) + 1) - 0.5, grid, cmap=cmap,
                                 norm=LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10))
            ax.set_ylim(len(names) - 0.5, -0.5)  # input layer at the top
            _layer_ticks(ax, list(names), sick, axis="y")
            ax.set_xlabel("step")
            fig.colorbar(mesh, ax=ax, label=label + " (log)", pad=0.01)
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d9d9d9")


def distributions_png(names: Sequence[str], quantiles: Sequence[Sequence[float] | None], *,
                      levels: Sequence[float] = (0.02, 0.15, 0.5, 0.85, 0.98),
                      sick: Mapping[str, str] | None = None, ylabel: str = "activation value",
                      title: str = "") -> bytes:
    """Per layer (input first): a box from the 15th to the 85th percentile, whiskers to the
    2nd and 98th, a line at the median (the quantile levels of ``stats.QUANTILES``).

    Glorot & Bengio 2010 (Fig. 6) show the same thing as histograms: with standard init
    the top sigmoid layer sits at 0 (saturated) while the lower ones stay around 0.5.
    """
    sick = dict(sick or {})
    lv = [round(float(q), 4) for q in levels]
    with rc_context(_RC):
        width = min(max(9.0, 0.22 * len(names) + 4), 16)
        fig, (ax,) = _figure(width, 4.2)
        have = [i for i, q in enumerate(quantiles)
                if q is not None and len(q) == len(lv) and all(math.isfinite(v) for v in q)]
        for i, q in enumerate(quantiles):
            if q is not None and i not in have:
                _nonfinite(ax, i, "× non-finite")
        ax.set_xlim(-0.6, max(len(names) - 0.4, 0.6))
        if not have:
            _no_data(ax, "no percentiles recorded")
        else:
            lo_i, hi_i = lv.index(0.02) if 0.02 in lv else 0, lv.index(0.98) if 0.98 in lv \
                else len(lv) - 1
            q15, q50, q85 = (lv.index(p) if p in lv else None for p in (0.15, 0.5, 0.85))
            for i in have:
                q = quantiles[i]
                colour = SEVERITY_COLOUR.get(sick.get(names[i], ""), HEALTHY)
                ax.vlines(i, q[lo_i], q[hi_i], color=colour, lw=1.2)
                if q15 is not None and q85 is not None:
                    ax.add_patch(_box(i, q[q15], q[q85], colour))
                if q50 is not None:
                    ax.hlines(q[q50], i - 0.32, i + 0.32, color="black", lw=1.5)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("layer, input first")
            ax.grid(True, axis="y", alpha=0.3)
            _layer_ticks(ax, list(names), sick)
            ax.text(0.99, 0.99, "box 15-85th percentile, whiskers 2-98th, line median",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#555")
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


def _box(i: float, low: float, high: float, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.32, low), 0.64, max(high - low, 0.0), facecolor=colour, alpha=0.45,
                     edgecolor=colour, lw=1.0)


def global_norm_png(data: Steps, *, title: str = "") -> bytes:
    """The global gradient norm over steps (log), pre-clip norm where recorded, the clip
    threshold as a dashed line, clipped steps as orange dots, skipped steps as red
    vertical lines, non-finite steps as red × on top; the loss below when recorded."""
    step = np.asarray(data.step, dtype=np.float64)
    has_loss = data.loss is not None and np.isfinite(np.asarray(data.loss, dtype=float)).any()
    with rc_context(_RC):
        fig, axes = _figure(11.0, 5.6 if has_loss else 3.6, rows=2 if has_loss else 1,
                            sharex=True)
        ax = axes[0]
        norm = _positive(np.asarray(data.global_norm, dtype=float).tolist())
        pre = (_positive(np.asarray(data.clip_pre_norm, dtype=float).tolist())
               if data.clip_pre_norm is not None else np.full(len(step), np.nan))
        drawn = np.isfinite(norm).any() or np.isfinite(pre).any()
        both = np.isfinite(pre) & np.isfinite(norm)
        if np.isfinite(pre).any() and not (both.any() and np.allclose(pre[both], norm[both])):
            ax.plot(step, pre, color="#9e9e9e", lw=1.0, label="pre-clip norm")
        if np.isfinite(norm).any():
            ax.plot(step, norm, color=HEALTHY, lw=1.3, label="global norm")
        if data.clipped is not None and drawn:
            hit = np.asarray(data.clipped, dtype=float) == 1.0
            y = np.where(np.isfinite(pre), pre, norm)
            if hit.any():
                ax.plot(step[hit], y[hit], "o", ms=3.5, color=SEVERITY_COLOUR["warning"],
                        label=f"clipped on {_count(int(hit.sum()), 'step')}")
        if data.clip_threshold is not None and math.isfinite(data.clip_threshold) \
                and data.clip_threshold > 0 and drawn:
            ax.axhline(data.clip_threshold, ls="--", color="black", lw=1.0,
                       label=f"clip threshold {data.clip_threshold:.3g}")
        skipped_label = f"skipped: {_count(len(data.skipped_steps), 'step')}"
        for k, s in enumerate(data.skipped_steps):
            ax.axvline(s, color=SEVERITY_COLOUR["critical"], lw=1.0, alpha=0.7,
                       label=skipped_label if k == 0 else None)
        if data.nonfinite is not None:
            bad = np.asarray(data.nonfinite) > 0
            for s in step[bad]:
                _nonfinite(ax, s, "×")
        if len(step):
            ax.set_xlim(step.min() - 0.5, step.max() + 0.5)
        if drawn:
            ax.set_yscale("log")
            ax.set_ylabel("gradient norm (log)")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(loc="best", fontsize=8, framealpha=0.85)
        else:
            _no_data(ax, "no global norm recorded")
        if has_loss:
            loss = np.asarray(data.loss, dtype=float)
            axes[1].plot(step, loss, color="#37474f", lw=1.2)
            axes[1].set_ylabel("loss")
            axes[1].grid(True, axis="y", alpha=0.3)
            axes[1].set_xlabel("step")
        else:
            ax.set_xlabel("step")
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


def curves_png(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]], *,
               ylabel: str, log: bool = False, title: str = "") -> bytes:
    """Labelled (x, y) curves on one axis, e.g. the loss of two runs over steps."""
    with rc_context(_RC):
        fig, (ax,) = _figure(11.0, 3.6)
        drawn = False
        for k, (label, x, y) in enumerate(curves):
            y = np.asarray(y, dtype=np.float64)
            y = _positive(y.tolist()) if log else np.where(np.isfinite(y), y, np.nan)
            if np.isfinite(y).any():
                drawn = True
                ax.plot(np.asarray(x, dtype=np.float64), y, lw=1.4, label=plain(label),
                        color=SERIES_COLOURS[k % len(SERIES_COLOURS)])
        if drawn:
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(ylabel + (" (log)" if log else ""))
            ax.set_xlabel("step")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(loc="best", fontsize=8, framealpha=0.85)
        else:
            _no_data(ax, f"no {ylabel} recorded")
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)
