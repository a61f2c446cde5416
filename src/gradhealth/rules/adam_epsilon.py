"""Adam's epsilon: a layer whose gradient RMS has fallen to the order of eps.

Adam divides each update by sqrt(v_hat) + eps. Wortsman et al. 2023 (Sec. 3.4) show that
when a layer's gradient RMS (sqrt of v_hat) approaches eps the update shrinks toward
zero, and that a smaller eps restores it (docs/science.md#transformer-era-instabilities).
The shrink factor is rms / (rms + eps): 0.91 at ``EPS_RATIO`` = 10 (the issue's "within
~10x of epsilon": the slowdown has begun), 0.5 at ``CRITICAL_RATIO`` = 1. The eps
prescribed leaves ``SUGGESTED_MARGIN`` = 1000 between them (a 0.1% shrink), rounded down
to a power of ten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

EPS_RATIO = 10.0
CRITICAL_RATIO = 1.0
SUGGESTED_MARGIN = 1000.0


def suggested_eps(grad_rms: float) -> float:
    """The largest power of ten at most ``grad_rms`` / ``SUGGESTED_MARGIN``."""
    return 10.0 ** math.floor(math.log10(grad_rms / SUGGESTED_MARGIN))


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    sick = [s for s in sorted(layers.values(), key=lambda s: s.order)
            if s.adam_grad_rms is not None and s.adam_eps and s.adam_grad_rms > 0
            and s.adam_grad_rms < EPS_RATIO * s.adam_eps]
    findings = []
    for s in sick:
        assert s.adam_grad_rms is not None and s.adam_eps  # the filter above
        ratio = s.adam_grad_rms / s.adam_eps
        eps = suggested_eps(s.adam_grad_rms)
        findings.append(Finding(
            kind="adam_epsilon", module=s.name,
            severity="critical" if ratio < CRITICAL_RATIO else "warning",
            evidence={"grad_rms": s.adam_grad_rms, "eps": s.adam_eps, "ratio": ratio,
                      "threshold": EPS_RATIO, "update_shrink": ratio / (ratio + 1.0),
                      "suggested_eps": eps},
            prescription=Remedy("adam-epsilon", (s.name,),
                                {"eps": s.adam_eps, "grad_rms": s.adam_grad_rms,
                                 "suggested": eps}),
            modules=(s.name,),
            message=(f"the gradient RMS of `{s.name}` as Adam sees it is {s.adam_grad_rms:.3g}, "
                     f"{ratio:.3g}x its eps {s.adam_eps:g}: its updates shrink to "
                     f"{ratio / (ratio + 1.0):.0%} of their size")))
    return findings
