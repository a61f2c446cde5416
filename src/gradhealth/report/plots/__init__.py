"""The HTML report's figures: pure functions, numbers in, PNG bytes out (matplotlib, Agg).

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``: no global figure registry, no backend switch, nothing left open. Names from
the model are drawn as plain text (``$`` escaped, so a module named ``$x$`` is not math).
Sick layers are drawn in the severity's colour; the others in one neutral blue. What all
figures share (colours, tick labels, the PNG bytes) is in ``figure``.

- ``gradient_flow_png`` (``flow``): a value per layer in forward order, log scale (the
  gradient flow).
- ``heatmap_png`` (``heatmap``): a layer-by-step statistic from the run store, log colour
  scale.
- ``distributions_png`` (``distributions``): per-layer percentile boxes, the view of
  Glorot & Bengio 2010, Fig. 6 (activation values per layer) drawn from the
  2/15/50/85/98th percentiles.
- ``global_norm_png`` (``global_norm``): the global gradient norm (and loss) over steps,
  with the clip threshold, clipped, skipped and non-finite steps marked.
- ``curves_png`` (``curves``): labelled (x, y) curves on one axis.
"""

from gradhealth.report.plots.curves import curves_png
from gradhealth.report.plots.distributions import distributions_png
from gradhealth.report.plots.figure import (
    DPI,
    HEALTHY,
    LABEL_CHARS,
    MAX_TICKS,
    SERIES_COLOURS,
    SEVERITY_COLOUR,
    plain,
    short,
)
from gradhealth.report.plots.flow import Series, gradient_flow_png
from gradhealth.report.plots.global_norm import Steps, global_norm_png
from gradhealth.report.plots.heatmap import MAX_COLUMNS, heatmap_png

__all__ = [
    "DPI", "HEALTHY", "LABEL_CHARS", "MAX_COLUMNS", "MAX_TICKS", "SERIES_COLOURS",
    "SEVERITY_COLOUR", "Series", "Steps", "curves_png", "distributions_png",
    "global_norm_png", "gradient_flow_png", "heatmap_png", "plain", "short",
]
