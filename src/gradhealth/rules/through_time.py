"""Vanishing and exploding gradients through time in recurrent modules.

A recurrent module is deep in time: dL/dx_t is the gradient after back-propagating
through T - t steps of the recurrence, and its norm behaves like rho^(T-t) for a
recurrent matrix of spectral radius rho (Pascanu, Mikolov & Bengio 2013, Sec. 2.1-2.2;
exactly rho^T for a linear RNN with W = rho Q, docs/science.md#through-time). We compare the RMS of
dL/dx_t over the first tenth of the sequence with that over the last tenth.
This sees the loss-at-the-end case (classification, the adding problem); when every
step has its own loss term, early steps get their own direct gradient and a vanishing
long-range component can hide under it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

MIN_STEPS = 8
TIME_VANISHING_RATIO = 1e-2
TIME_EXPLODING_RATIO = 1e2
CRITICAL_FACTOR = 1e2  # two more orders of magnitude past the threshold

FORGET_BIAS = 1.0
"""Jozefowicz et al. 2015: an LSTM forget-gate bias of 1 closes most of its gap to the GRU.
The floor of ``forget_bias``: longer sequences need more (docs/science.md#the-forget-gate)."""
CLIP_NORM = 1.0
"""The clip threshold offered before training norms are known (as in ``rules.exploding``)."""
ORTHOGONAL_GAIN = 1.0
"""An orthogonal recurrent matrix with this gain starts at spectral radius 1: neither rho^T
vanishing nor exploding."""


def forget_bias(steps: int | None) -> float:
    """The LSTM forget-gate bias b whose gate keeps the cell's gradient above the vanishing
    threshold over ``steps``: with the forget gate near sigmoid(b), dc_T/dc_0 ~
    sigmoid(b)^T, so sigmoid(b)^T >= ``TIME_VANISHING_RATIO`` gives b = logit(r^(1/T)),
    rounded up to a tenth and never under ``FORGET_BIAS`` (T = 300: 4.2; T = 50: 2.4).
    """
    if not steps or steps < 2:
        return FORGET_BIAS
    p = TIME_VANISHING_RATIO ** (1.0 / steps)
    return max(FORGET_BIAS, math.ceil(10 * math.log(p / (1.0 - p))) / 10)


def cell(type_name: str) -> str | None:
    """"lstm", "gru" or "rnn" from a recurrent module's (or Keras layer's) type name."""
    low = type_name.lower()
    return next((c for c in ("lstm", "gru", "rnn") if c in low), None)


def vanishing_remedy(name: str, steps: int | None = None, type_name: str = "") -> Remedy:
    params: dict[str, Any] = {}
    if cell(type_name) != "gru":  # a GRU has no forget-gate bias to set
        params["forget_bias"] = forget_bias(steps)
    if cell(type_name):
        params["cell"] = cell(type_name)
    if steps:
        params["steps"] = steps
    return Remedy("gate-recurrence", (name,), params)


def exploding_remedy(name: str) -> Remedy:
    """Clip (Pascanu et al. 2013, Sec. 3.2), then start the recurrence at radius 1."""
    return Remedy("clip-global-norm", (), {"max_norm": CLIP_NORM, "stopgap": False},
                  then=(Remedy("orthogonal-recurrent", (name,), {"gain": ORTHOGONAL_GAIN}),))


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    findings = []
    for s in layers.values():
        series = s.time_grad_rms
        if s.role != "recurrent" or not series or len(series) < MIN_STEPS:
            continue
        k = max(1, len(series) // 10)
        early, late = statistics.fmean(series[:k]), statistics.fmean(series[-k:])
        if late <= 0 or not (early == early):  # no gradient reached the end, or NaN
            continue
        ratio = early / late
        evidence = {"grad_ratio_first_to_last_steps": ratio, "steps": len(series),
                    "window": k, "grad_rms_first_steps": early, "grad_rms_last_steps": late,
                    "per_step_factor": ratio ** (1.0 / max(len(series) - k, 1))}
        if ratio < TIME_VANISHING_RATIO:
            evidence["threshold"] = TIME_VANISHING_RATIO
            findings.append(Finding(
                kind="vanishing", module=s.name,
                severity=("critical" if ratio < TIME_VANISHING_RATIO / CRITICAL_FACTOR
                          else "warning"),
                evidence=evidence, modules=(s.name,),
                prescription=vanishing_remedy(s.name, len(series), s.type),
                message=(f"through time: dL/dx at the first steps of `{s.name}` "
                         + (f"is {ratio:.2g} of that at the last steps" if ratio > 0 else
                            "underflows to 0 (the last steps' is "
                            f"{late:.2g}): no gradient reaches them")
                         + f", over {len(series)} steps")))
        elif ratio > TIME_EXPLODING_RATIO:
            evidence["threshold"] = TIME_EXPLODING_RATIO
            findings.append(Finding(
                kind="exploding", module=s.name,
                severity=("critical" if ratio > TIME_EXPLODING_RATIO * CRITICAL_FACTOR
                          else "warning"),
                evidence=evidence, prescription=exploding_remedy(s.name), modules=(s.name,),
                message=(f"through time: dL/dx at the first steps of `{s.name}` is "
                         f"{ratio:.3g}x that at the last steps, over {len(series)} steps")))
    return findings
