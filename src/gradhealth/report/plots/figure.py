"""What every figure shares: colours, sizes, layer tick labels, a bare Agg ``Figure`` (never
``pyplot``) and its PNG bytes."""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradhealth.errors import GradHealthWarning

if TYPE_CHECKING:  # matplotlib.typing.RcKeyType is newer than the oldest supported release
    from matplotlib.typing import RcKeyType

SEVERITY_COLOUR = {"critical": "#c62828", "warning": "#ef6c00", "info": "#0277bd"}
HEALTHY = "#1f5fa8"
SERIES_COLOURS = ("#1f5fa8", "#2e7d32", "#6a1b9a", "#455a64")
MAX_TICKS = 40  # at most this many layer names on an axis; the sick ones always shown
LABEL_CHARS = 28  # long qualified names keep their tail: "…layers.11.mlp.fc1"
DPI = 100
LIMIT = 1e150
"""Values beyond +-LIMIT (on a log axis: outside [1/LIMIT, LIMIT]) are left out of a figure
and counted on it: matplotlib's autoscaling overflows float64 near 1e290 and above, and no
float32 or bfloat16 training number comes near LIMIT (float32 spans 1.4e-45..3.4e38)."""
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


P = ParamSpec("P")


def guarded(draw: Callable[P, bytes]) -> Callable[P, bytes]:
    """``draw`` that never raises: a figure that cannot be drawn becomes a figure saying so
    (and a ``GradHealthWarning``), so one bad number never costs the whole report."""
    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> bytes:
        try:
            return draw(*args, **kwargs)
        except Exception as err:
            what = f"{type(err).__name__}: {err}"
        warnings.warn(f"gradhealth: {draw.__name__} could not draw its figure ({what}); the "
                      f"report shows a note in its place", GradHealthWarning, stacklevel=2)
        fig, (ax,) = _figure(9.0, 1.6)
        _no_data(ax, plain(f"this figure could not be drawn: {what}"[:300]))
        return _png(fig)
    return wrapper


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


def _floats(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=True)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _positive(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """float array, NaN for None / non-finite / non-positive (unplottable on a log axis) and
    for values outside [1/LIMIT, LIMIT] (``beyond`` counts those)."""
    arr = _floats(values)
    arr[~np.isfinite(arr) | (arr <= 0) | (arr > LIMIT) | (arr < 1 / LIMIT)] = np.nan
    return arr


def _bounded(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """float array for a linear axis, NaN for None / non-finite / beyond +-LIMIT."""
    arr = _floats(values)
    arr[~np.isfinite(arr) | (np.abs(arr) > LIMIT)] = np.nan
    return arr


def beyond(values: Sequence[float | None] | np.ndarray, log: bool = False) -> int:
    """How many finite values cannot be drawn: beyond +-LIMIT (on a log axis: positive
    ones outside [1/LIMIT, LIMIT]; zero and negative values are a log axis's own gap)."""
    arr = _floats(values)
    finite = arr[np.isfinite(arr)]
    if log:
        finite = finite[finite > 0]
        return int(((finite > LIMIT) | (finite < 1 / LIMIT)).sum())
    return int((np.abs(finite) > LIMIT).sum())


def _not_drawn(ax, count: int, what: str = "value") -> None:
    """Say on the axes how many finite values were left out as beyond the plottable range."""
    if count:
        ax.text(0.01, 0.02, f"{count} {what}{'s' if count != 1 else ''} beyond "
                f"{1 / LIMIT:.0e}..{LIMIT:.0e} not drawn", transform=ax.transAxes, ha="left",
                va="bottom", fontsize=8, color=SEVERITY_COLOUR["critical"], in_layout=False)


def _xlim(ax, low: float, high: float) -> None:
    """Set the x range, widened when ``low`` and ``high`` are one float (steps near 2**63
    are: float64 holds 53 bits), so matplotlib is never given an empty range."""
    low, high = low - 0.5, high + 0.5
    if not high > low:
        pad = abs(high) * 1e-6
        low, high = low - pad, high + pad
    ax.set_xlim(low, high)


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
