"""Vanishing and exploding gradients through time in recurrent modules.

A recurrent module is deep in time: dL/dx_t is the gradient after back-propagating
through T - t steps of the recurrence, and its norm behaves like rho^(T-t) for a
recurrent matrix of spectral radius rho (Pascanu, Mikolov & Bengio 2013, Sec. 2.1-2.2;
exactly rho^T for a linear RNN with W = rho Q, SCIENCE.md). We compare the RMS of
dL/dx_t over the first tenth of the sequence with that over the last tenth.
This sees the loss-at-the-end case (classification, the adding problem); when every
step has its own loss term, early steps get their own direct gradient and a vanishing
long-range component can hide under it.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding

MIN_STEPS = 8
TIME_VANISHING_RATIO = 1e-2
TIME_EXPLODING_RATIO = 1e2
CRITICAL_FACTOR = 1e2  # two more orders of magnitude past the threshold

VANISHING_REMEDY = (
    "Gates keep the gradient alive through time: replace nn.RNN with nn.LSTM or nn.GRU "
    "(for an LSTM set the forget-gate bias to 1, Jozefowicz et al. 2015); initialise "
    "weight_hh orthogonally (torch.nn.init.orthogonal_ on each gate's block); or shorten "
    "the back-propagation window (truncated BPTT)."
)
EXPLODING_REMEDY = (
    "Clip the global gradient norm after backward (Pascanu et al. 2013, Sec. 3.2): "
    "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0), or "
    "gradhealth.ClipNorm(1.0); and initialise weight_hh orthogonally with gain <= 1 "
    "(torch.nn.init.orthogonal_) so the recurrent spectral radius starts at 1."
)


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
                severity="critical" if ratio < TIME_VANISHING_RATIO / CRITICAL_FACTOR else "warning",
                evidence=evidence, remedy=VANISHING_REMEDY, modules=(s.name,),
                message=(f"through time: dL/dx at the first steps of `{s.name}` is {ratio:.2g}"
                         f" of that at the last steps, over {len(series)} steps")))
        elif ratio > TIME_EXPLODING_RATIO:
            evidence["threshold"] = TIME_EXPLODING_RATIO
            findings.append(Finding(
                kind="exploding", module=s.name,
                severity="critical" if ratio > TIME_EXPLODING_RATIO * CRITICAL_FACTOR else "warning",
                evidence=evidence, remedy=EXPLODING_REMEDY, modules=(s.name,),
                message=(f"through time: dL/dx at the first steps of `{s.name}` is "
                         f"{ratio:.3g}x that at the last steps, over {len(series)} steps")))
    return findings
