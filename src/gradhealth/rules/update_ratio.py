"""Update-to-weight ratio: one step moving a layer by a large fraction of its weights.

The ratio |lr x update| / |W| per layer (measured on the watch's sampled steps from the
weights before and after the step) is ~1e-3 in healthy training by common practice, and
its rising by orders of magnitude is an early sign of the instabilities of Wortsman et al.
2023. No paper gives a limit, and 1e-3 is none: the ratio is ~lr / RMS(W) under Adam,
and small models train best at ratios of a few 1e-2 (docs/science.md#transformer-era-instabilities).
So the rule fires on what no healthy run we measured does: one layer moving
``PEER_FACTOR`` times more than the median layer (and more than ``PEER_FLOOR``), or any
layer moving by ``CRITICAL_RATIO``, its own size; the peers must move (``MEDIAN_FLOOR``).
This is a training-time verdict: the watch calls ``judge`` once per window for each
sampled step, with every layer's ratio.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

from gradhealth.rules.finding import Finding, Severity
from gradhealth.rules.remedy import Remedy

PEER_FACTOR = 10.0
"""Derived from our measurement: the largest layer's ratio is 1.3-2x the median layer's at
the best learning rate of the wortsman2023 lab (1e-2), up to 7x at 1e-1 where its baseline
diverges, 1.6-1.7x in small SGD runs whose steps move layers by 13-32%. Ten times is a
layer out of step with the rest (a learning rate too high for it alone: a norm's gain, a
small- or zero-initialised projection)."""
PEER_FLOOR = 0.1
"""Derived from our measurement: at the best learning rate of the lab no layer passes
0.037; a healthy classifier's head moves by up to 0.067 at its first SGD step (25x its
peers: the watch benchmark's converging MLPs), so a layer ahead of its peers is not yet
moving fast below 0.1."""
MEDIAN_FLOOR = 1e-4
"""The peer comparison needs peers that move: a median layer moving by less than 1e-4 of
its size per step is a stalled net (under SGD, vanishing gradients; the benchmark's 8-layer
sigmoid MLP stuck at chance moves its median layer by <5e-5 and its output layer by 0.05),
which the vanishing rule reports; one layer ahead of stalled peers says nothing more."""
CRITICAL_RATIO = 1.0
"""One step as large as the weights themselves: it rewrites the layer. The largest we
measured in a run that still trained: 0.32 (SGD with the loss scaled 100x)."""


def judge(step: int, ratios: Mapping[str, float]) -> list[Finding]:
    """One finding for a sampled step whose layers moved too far (see the module
    docstring), about the worst of them (``modules`` lists them all, worst first)."""
    finite = {m: r for m, r in ratios.items() if math.isfinite(r) and r > 0}
    if not finite:
        return []
    median = statistics.median(finite.values())
    peers_move = median >= MEDIAN_FLOOR
    over = sorted((m for m, r in finite.items() if r >= CRITICAL_RATIO
                   or (peers_move and r > PEER_FLOOR and r >= PEER_FACTOR * median)),
                  key=lambda m: -finite[m])
    if not over:
        return []
    worst = over[0]
    ratio = finite[worst]
    severity: Severity = "critical" if ratio >= CRITICAL_RATIO else "warning"
    threshold = CRITICAL_RATIO if ratio >= CRITICAL_RATIO else PEER_FACTOR * median
    return [Finding(
        kind="update_ratio", module=worst, severity=severity,
        evidence={"step": step, "ratio": ratio, "threshold": threshold,
                  "median_ratio": median, "peer_factor": ratio / median,
                  "layers_over": len(over)},
        prescription=Remedy("update-ratio", tuple(over),
                            {"ratio": ratio, "threshold": threshold, "median": median}),
        modules=tuple(over),
        message=(f"step {step} moved `{worst}` by {ratio:.3g} of its weights' norm, "
                 f"{ratio / median:.3g}x the median layer ({median:.3g})"
                 + (f"; {len(over) - 1} more layer(s) too" if len(over) > 1 else "")))]
