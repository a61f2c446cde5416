"""Vanishing gradients through depth.

Fires when the gradient reaching the input end of the network is under
``VANISHING_RATIO`` times the gradient at the output end. Two orders of magnitude is
where He et al. 2015 (Sec. 2.2, Fig. 3) see a 30-layer ReLU net with Glorot init stall
(measured ratio 5.4e-5, SCIENCE.md) while the 30-layer Glorot-tanh net that still trains
keeps 0.15. Looking at dL/d(output) rather than weight-gradient norms is deliberate:
those stay flat across depth for ReLU+Glorot (SCIENCE.md, "The trap").
"""

from __future__ import annotations

from typing import Any, Mapping

from gradhealth.findings import Finding, LayerStats
from gradhealth.rules import depth, remedies

VANISHING_RATIO = 1e-2
CRITICAL_RATIO = 1e-4


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    p = depth.profile(layers)
    if p is None or p.ratio >= VANISHING_RATIO:
        return []
    group = depth.affected(p, below=VANISHING_RATIO) or p.hidden[:1]
    kind = remedies.dominant_activation(layers, group)
    evidence = depth.evidence(p, group, VANISHING_RATIO, kind, remedies.init_scale(group),
                              "layers_below_threshold")
    return [Finding(
        kind="vanishing",
        module=group[0].name,
        severity="critical" if p.ratio < CRITICAL_RATIO else "warning",
        evidence=evidence,
        remedy=remedies.init_remedy(kind, group, "shrink"),
        message=(f"the gradient reaching `{group[0].name}` is {p.ratio:.2g} of that at the "
                 f"output end ({p.per_layer:.3g}x per layer over {len(p.hidden) + 1} layers);"
                 f" {len(group)} layer(s) get under {VANISHING_RATIO:g} of it"),
        modules=tuple(s.name for s in group),
    )]
