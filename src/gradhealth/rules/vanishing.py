"""Vanishing gradients through depth.

Fires when the gradient reaching the input end of the network is under
``VANISHING_RATIO`` times the gradient at the output end. Two orders of magnitude is
where He et al. 2015 (Sec. 2.2, Fig. 3) see a 30-layer ReLU net with Glorot init stall
(measured ratio 5.4e-5, docs/science.md) while the 30-layer Glorot-tanh net that still trains
keeps 0.15. Looking at dL/d(output) rather than weight-gradient norms is deliberate:
those stay flat across depth for ReLU+Glorot (docs/science.md#the-trap-flat-weight-gradients).

Plain nets with one or two hidden layers have no thirds to compare: they are measured
from the head along the chain of layers (``rules/chain.py``) and judged against
``SHALLOW_VANISHING_RATIO``. Plain nets with three are measured from the head too, and
judged against ``VANISHING_RATIO`` (see ``THREE_HIDDEN_LAYERS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import activation, chain, depth
from gradhealth.rules.finding import Finding

VANISHING_RATIO = 1e-2
CRITICAL_RATIO = 1e-4

TRAINABLE_DEPTH_SCALES = 6
SHALLOW_VANISHING_RATIO = math.exp(-TRAINABLE_DEPTH_SCALES / 2)
"""e^-3 ~ 0.050, for the gradient norm at the first layer over that at the head.

Schoenholz et al. 2017 (docs/science.md#six-depth-scales): nets train up to a depth of about six
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


THREE_HIDDEN_LAYERS = chain.MAX_HIDDEN_LAYERS
"""Three hidden layers: measured from the head, three steps, against VANISHING_RATIO.

The depth profile's thirds are then one layer each, two steps apart, so 0.01 between them
allowed 0.1 per layer, where two hidden layers from the head (e^-3 over two steps) allow
e^-1.5 = 0.22 per layer and four hidden layers (0.01 over the three steps from the first
to the fourth) 0.01^(1/3) = 0.22. A sigmoid net with PyTorch's default init (0.14 per
layer: sqrt(chi_1) <= sqrt(1/48)) fell in that gap: flagged with two hidden layers and
with four, not with three (0.018-0.021 between the thirds). From the head a chain of three
hidden layers has three steps, as many as four hidden layers have between their thirds,
and the same threshold allows it the same 0.22 per layer.

The six-depth-scales budget is not carried to three steps: it would ask chi_1 > e^-2 of
every layer and flag GELU, SiLU and Softplus with default init (chi_1 -> 1/12; 0.024-0.031
from the head) and, at four steps, ReLU with default init (0.026): nets that train. The
6 xi_c law was fitted on deep nets, where a depth scale spans many layers; with one or two
hidden layers it is the only bound there is, with three the depth rule's own applies.

Measured from the head by gh.probe, three hidden layers of width 8 to 1024 on Gaussian
inputs or 784 pixels in [0, 1]: sigmoid with default init 0.0026-0.0031 and with Glorot
or LeCun init 0.005-0.008 (flagged); sigmoid with He init or Glorot's tanh gain
0.008-0.018 (about 0.3 per layer, as GELU with default init, which the thirds flag from
five hidden layers up); GELU, SiLU, Softplus with default init 0.024-0.031, Mish
0.042-0.049, ReLU 0.042-0.076, tanh and ELU 0.14-0.17; the non-sigmoid activations with He,
Glorot or LeCun init 0.04 and up. On the line: Ioffe & Szegedy's 3x100 sigmoid baseline
(N(0, 0.1^2) weights, chi_1 ~ 0.044, 0.21 per layer) reads 0.009-0.011 over seeds 0-2;
it trains, 34x slower than with BatchNorm to 70% (docs/lab/batchnorm.md). Left as it is:
four hidden layers' thirds leave the head step out, so sigmoid under Glorot init with a
default-init head reads 0.012 there and is not flagged, while with three (0.007) or five
(0.003) hidden layers it is."""


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    p = chain.profile(layers) or depth.profile(layers)
    shallow = p is not None and len(p.hidden) < THREE_HIDDEN_LAYERS
    threshold = SHALLOW_VANISHING_RATIO if shallow else VANISHING_RATIO
    if p is None or p.ratio >= threshold:
        return []
    group = depth.affected(p, below=threshold) or p.hidden[:1]
    kind = activation.dominant_activation(layers, group)
    evidence = depth.evidence(p, group, threshold, kind, activation.init_scale(group),
                              "layers_below_threshold")
    end = "the head" if p.output_end == "head" else "the output end"
    return [Finding(
        kind="vanishing",
        module=group[0].name,
        severity="critical" if p.ratio < CRITICAL_RATIO else "warning",
        evidence=evidence,
        prescription=activation.init_remedy(kind, group, "shrink"),
        message=(f"the gradient reaching `{group[0].name}` "
                 + (f"is {p.ratio:.2g} of that at {end} ({p.per_layer:.3g}x per layer"
                    if p.ratio > 0 else f"underflows to 0 (no gradient from {end} reaches "
                    f"it") + f" over {len(p.hidden) + 1} layers);"
                 f" {len(group)} layer(s) get under {threshold:.2g} of it"),
        modules=tuple(s.name for s in group),
    )]
