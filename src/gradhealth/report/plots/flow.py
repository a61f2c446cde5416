"""The gradient-flow plot: a value per layer in forward order, log scale (``Series``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context

from gradhealth.report.plots.figure import (
    _RC,
    SERIES_COLOURS,
    SEVERITY_COLOUR,
    _figure,
    _layer_ticks,
    _no_data,
    _nonfinite,
    _not_drawn,
    _png,
    _positive,
    beyond,
    guarded,
    plain,
)


@dataclass(frozen=True)
class Series:
    """One line of a gradient-flow plot: a value per layer, in forward order."""

    label: str
    names: Sequence[str]
    values: Sequence[float | None]
    dashed: bool = False
    sick: Mapping[str, str] | None = None  # this series' flagged layers (default: the plot's)


@guarded
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
        _not_drawn(ax, sum(beyond(s.values, log=True) for s in series))
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
