"""The update-to-weight ratio of each layer on a window's sampled steps, judged.

The recorder measures the update and the weight norms of every parameter on sampled
steps (NaN elsewhere); once the window reaches the host, each measured step's per-module
ratio |update| / |W| goes to ``rules.update_ratio``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gradhealth.measure.params import ParamLayout
from gradhealth.rules import update_ratio
from gradhealth.rules.finding import Finding


def judged(steps: np.ndarray, drained: Mapping[str, np.ndarray],
           layout: ParamLayout) -> list[tuple[Finding, int]]:
    """(finding, step) for the window's sampled steps whose layers moved too far."""
    n = len(steps)
    update, weight = drained["update"][:n], drained["weight"][:n]
    found = []
    for i in np.flatnonzero(np.isfinite(update).any(axis=1)):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = layout.per_module(update[i]) / layout.per_module(weight[i])
        step = int(steps[i])
        found += [(f, step) for f in update_ratio.judge(step, dict(zip(layout.modules,
                                                                       ratio.tolist())))]
    return found
