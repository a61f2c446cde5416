"""Vanishing gradients through depth.

Fires when the gradient reaching the input end of the network is under
``VANISHING_RATIO`` times the gradient at the output end. Two orders of magnitude is
where He et al. 2015 (Sec. 2.2, Fig. 3) see a 30-layer ReLU net with Glorot init stall
(measured ratio 5.4e-5, SCIENCE.md) while the 30-layer Glorot-tanh net that still trains
keeps 0.15. Looking at dL/d(output) rather than weight-gradient norms is deliberate:
those stay flat across depth for ReLU+Glorot (SCIENCE.md, "The trap").

Plain nets with one or two hidden layers have no thirds to compare: they are measured
from the head along the chain of layers (``rules/chain.py``) and judged against
``SHALLOW_VANISHING_RATIO``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from gradhealth.findings import Finding, LayerStats
from gradhealth.rules import chain, depth, remedies

VANISHING_RATIO = 1e-2
CRITICAL_RATIO = 1e-4

TRAINABLE_DEPTH_SCALES = 6
SHALLOW_VANISHING_RATIO = math.exp(-TRAINABLE_DEPTH_SCALES / 2)
"""e^-3 ~ 0.050, for the gradient norm at the first layer over that at the head.

Schoenholz et al. 2017 (SCIENCE.md, mean field): nets train up to a depth of about six
depth scales, 6 xi_c with xi_c = -1/ln(chi_c); where gradients vanish (the ordered phase,
c* = 1) chi_c = chi_1, the factor by which each layer multiplies ||dL/dh||^2. So L steps
of propagation exceed the trainable depth exactly when chi_1^L < e^-6, i.e. when the
gradient norm falls by more than e^-3 from the head to the first layer. Measured by
gh.probe at init: the lab's 784-300-100-10 sigmoid net with PyTorch's default init
0.019-0.020 (chi_1 <= 1/48 per step), the same shape with 8 to 1024 units 0.018-0.023.
Healthy nets with two hidden layers: GELU, SiLU, Softplus with default init 0.08-0.11
(chi_1 -> 1/12 for small inputs, the closest), ReLU with default init 0.15-0.18, tanh
with default init 0.24-0.33, ReLU+He, Glorot or LeCun tanh, SELU+LeCun 0.28-0.99. Sigmoid
hidden layers under Glorot, LeCun or He init with a default-init head read 0.03-0.04 and
are flagged too (sigmoid' <= 1/4 whatever the init); one hidden sigmoid layer (0.13-0.15)
is not: one step of chi_1 = 1/48 is within six depth scales."""


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    p = depth.profile(layers) or chain.profile(layers)
    threshold = SHALLOW_VANISHING_RATIO if p and p.output_end == "head" else VANISHING_RATIO
    if p is None or p.ratio >= threshold:
        return []
    group = depth.affected(p, below=threshold) or p.hidden[:1]
    kind = remedies.dominant_activation(layers, group)
    evidence = depth.evidence(p, group, threshold, kind, remedies.init_scale(group),
                              "layers_below_threshold")
    end = "the head" if p.output_end == "head" else "the output end"
    return [Finding(
        kind="vanishing",
        module=group[0].name,
        severity="critical" if p.ratio < CRITICAL_RATIO else "warning",
        evidence=evidence,
        remedy=remedies.init_remedy(kind, group, "shrink"),
        message=(f"the gradient reaching `{group[0].name}` is {p.ratio:.2g} of that at {end} "
                 f"({p.per_layer:.3g}x per layer over {len(p.hidden) + 1} layers);"
                 f" {len(group)} layer(s) get under {threshold:.2g} of it"),
        modules=tuple(s.name for s in group),
    )]
