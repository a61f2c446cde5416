"""Labelled (x, y) curves on one axis, e.g. the loss of two runs over steps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import rc_context

from gradhealth.report.plots.figure import (
    _RC,
    SERIES_COLOURS,
    _bounded,
    _figure,
    _no_data,
    _not_drawn,
    _png,
    _positive,
    beyond,
    guarded,
    plain,
)

Curve = tuple[str, Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]


@guarded
def curves_png(curves: Sequence[Curve], *,
               ylabel: str, log: bool = False, title: str = "") -> bytes:
    """Labelled (x, y) curves on one axis, e.g. the loss of two runs over steps."""
    with rc_context(_RC):
        fig, (ax,) = _figure(11.0, 3.6)
        drawn, left_out = False, 0
        for k, (label, x, y) in enumerate(curves):
            raw = np.asarray(y, dtype=np.float64)
            ys = _positive(raw) if log else _bounded(raw)
            left_out += beyond(raw, log=log)
            if np.isfinite(ys).any():
                drawn = True
                ax.plot(np.asarray(x, dtype=np.float64), ys, lw=1.4, label=plain(label),
                        color=SERIES_COLOURS[k % len(SERIES_COLOURS)])
        if drawn:
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(ylabel + (" (log)" if log else ""))
            ax.set_xlabel("step")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(loc="best", fontsize=8, framealpha=0.85)
            _not_drawn(ax, left_out)
        else:
            _no_data(ax, f"no {ylabel} recorded")
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)
