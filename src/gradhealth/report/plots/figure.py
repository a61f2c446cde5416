"""What every figure shares: colours, sizes, layer tick labels, a bare Agg ``Figure`` (never
``pyplot``) and its PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:  # matplotlib.typing.RcKeyType is newer than the oldest supported release
    from matplotlib.typing import RcKeyType

SEVERITY_COLOUR = {"critical": "#c62828", "warning": "#ef6c00", "info": "#0277bd"}
HEALTHY = "#1f5fa8"
SERIES_COLOURS = ("#1f5fa8", "#2e7d32", "#6a1b9a", "#455a64")
MAX_TICKS = 40  # at most this many layer names on an axis; the sick ones always shown
LABEL_CHARS = 28  # long qualified names keep their tail: "…layers.11.mlp.fc1"
DPI = 100
_RC: dict[RcKeyType, Any] = {"font.size": 9, "axes.titlesize": 10,
                              "axes.spines.top": False, "axes.spines.right": False}


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


def _nonfinite(ax, x: float, text: str) -> None:
    """A red mark at the top of the axes above ``x`` (data), outside the layout."""
    ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top",
                color=SEVERITY_COLOUR["critical"], fontweight="bold", annotation_clip=True,
                in_layout=False)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])
