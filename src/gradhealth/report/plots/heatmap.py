"""The heatmap: a layer-by-step statistic from the run store, log colour scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.colors import LogNorm

from gradhealth.report.plots.figure import (
    _RC,
    _figure,
    _layer_ticks,
    _no_data,
    _not_drawn,
    _png,
    _positive,
    beyond,
    guarded,
    plain,
)

MAX_COLUMNS = 600  # a heatmap wider than this many steps is binned (geometric mean)
FEW_COLUMNS = 20
"""Under this many recorded steps each one is a column of its own, labelled by its step
(three samples at steps 0, 10, 20 are not 10-step-wide blocks from step -5)."""


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
    """Column edges: midway between recorded steps, the outer ones at the first and last
    step (the axis does not start before the run)."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5], dtype=np.float64)
    mid = (x[1:] + x[:-1]) / 2.0
    return np.concatenate([[x[0]], mid, [x[-1]]])


@guarded
def heatmap_png(steps: Sequence[int] | np.ndarray, names: Sequence[str], values: np.ndarray, *,
                sick: Mapping[str, str] | None = None, label: str = "gradient RMS",
                title: str = "") -> bytes:
    """``values[i, j]`` (layer ``j`` at ``steps[i]``) as colour, log scale, input layer at
    the top; NaN, zero and non-finite cells are grey. Long runs are binned by step."""
    sick = dict(sick or {})
    at = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).reshape(len(at), len(names))
    with rc_context(_RC):
        height = min(max(3.0, 1.6 + 0.16 * len(names)), 14.0)
        fig, (ax,) = _figure(11.0, height)
        positive = np.isfinite(_positive(values.ravel())).reshape(values.shape)
        if not positive.any():
            _no_data(ax, f"no finite positive {label} recorded")
        else:
            logv = np.full(values.shape, np.nan)
            np.log10(values, out=logv, where=positive)
            cols, logv = _binned(at, logv)
            grid = np.ma.masked_invalid(10.0 ** logv.T)
            lo, hi = float(np.nanmin(10.0 ** logv)), float(np.nanmax(10.0 ** logv))
            cmap = _cmap()
            few = len(cols) < FEW_COLUMNS
            x = np.arange(len(cols) + 1) - 0.5 if few else _edges(cols)
            mesh = ax.pcolormesh(x, np.arange(len(names) + 1) - 0.5, grid, cmap=cmap,
                                 norm=LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10))
            if few:
                ax.set_xticks(np.arange(len(cols)), [f"{int(c)}" for c in cols])
            ax.set_ylim(len(names) - 0.5, -0.5)  # input layer at the top
            _layer_ticks(ax, list(names), sick, axis="y")
            ax.set_xlabel("recorded step" if few else "step")
            fig.colorbar(mesh, ax=ax, label=label + " (log)", pad=0.01)
            _not_drawn(ax, beyond(values.ravel(), log=True))
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d9d9d9")
