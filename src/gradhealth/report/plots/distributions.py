"""Per-layer percentile boxes: the view of Glorot & Bengio 2010, Fig. 6 (activation values
per layer), drawn from the 2/15/50/85/98th percentiles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import rc_context

from gradhealth.report.plots.figure import (
    _RC,
    HEALTHY,
    SEVERITY_COLOUR,
    _bounded,
    _figure,
    _layer_ticks,
    _no_data,
    _nonfinite,
    _png,
    guarded,
    plain,
)


@guarded
def distributions_png(names: Sequence[str], quantiles: Sequence[Sequence[float] | None], *,
                      levels: Sequence[float] = (0.02, 0.15, 0.5, 0.85, 0.98),
                      sick: Mapping[str, str] | None = None, ylabel: str = "activation value",
                      title: str = "") -> bytes:
    """Per layer (input first): a box from the 15th to the 85th percentile, whiskers to the
    2nd and 98th, a line at the median (the quantile levels of ``stats.QUANTILES``); a
    layer with a non-finite percentile, or one beyond +-LIMIT, gets an × on top instead.

    Glorot & Bengio 2010 (Fig. 6) show the same thing as histograms: with standard init
    the top sigmoid layer sits at 0 (saturated) while the lower ones stay around 0.5.
    """
    sick = dict(sick or {})
    lv = [round(float(q), 4) for q in levels]
    with rc_context(_RC):
        width = min(max(9.0, 0.22 * len(names) + 4), 16)
        fig, (ax,) = _figure(width, 4.2)
        have = {i: q for i, q in enumerate(quantiles) if q is not None and len(q) == len(lv)
                and np.isfinite(_bounded(q)).all()}
        for i, q in enumerate(quantiles):
            if q is not None and i not in have:
                huge = len(q) == len(lv) and all(math.isfinite(v) for v in q)
                _nonfinite(ax, i, "× out of range" if huge else "× non-finite")
        ax.set_xlim(-0.6, max(len(names) - 0.4, 0.6))
        if not have:
            _no_data(ax, "no percentiles recorded")
        else:
            lo_i, hi_i = lv.index(0.02) if 0.02 in lv else 0, lv.index(0.98) if 0.98 in lv \
                else len(lv) - 1
            q15, q50, q85 = (lv.index(p) if p in lv else None for p in (0.15, 0.5, 0.85))
            for i, q in have.items():
                colour = SEVERITY_COLOUR.get(sick.get(names[i], ""), HEALTHY)
                ax.vlines(i, q[lo_i], q[hi_i], color=colour, lw=1.2)
                if q15 is not None and q85 is not None:
                    ax.add_patch(_box(i, q[q15], q[q85], colour))
                if q50 is not None:
                    ax.hlines(q[q50], i - 0.32, i + 0.32, color="black", lw=1.5)
            scale = symlog_scale(list(have.values()))
            if scale is not None:  # one layer at 4e15 would flatten every other box
                ax.set_yscale("symlog", linthresh=scale, linscale=2.0)
            ax.set_ylabel(ylabel + (" (symlog)" if scale is not None else ""))
            ax.set_xlabel("layer, input first")
            ax.grid(True, axis="y", alpha=0.3)
            _layer_ticks(ax, list(names), sick)
            ax.text(0.99, 0.99, "box 15-85th percentile, whiskers 2-98th, line median",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#555")
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


SPREAD = 1e3
"""When the largest |percentile| is over SPREAD times the typical layer's 2-98 range, the
axis turns symmetric-log: linear within that range around 0, logarithmic beyond."""


def symlog_scale(rows: Sequence[Sequence[float]]) -> float | None:
    """The linear threshold for a symlog axis over ``rows`` of percentiles (the median of
    the layers' 2-98 spreads), or None when a linear axis shows every box."""
    spreads = [max(q) - min(q) for q in rows]
    top = max((abs(v) for q in rows for v in q), default=0.0)
    typical = float(np.median([s for s in spreads if s > 0])) if any(spreads) else 0.0
    if typical <= 0 or top <= SPREAD * typical:
        return None
    return typical


def _box(i: float, low: float, high: float, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.32, low), 0.64, max(high - low, 0.0), facecolor=colour, alpha=0.45,
                     edgecolor=colour, lw=1.0)
