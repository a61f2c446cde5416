"""The gradient through a shallow chain of weight layers, measured from the head.

A net with fewer than ``depth.MIN_HIDDEN_LAYERS`` hidden layers has no thirds for the
depth profile to compare, and one with exactly that many has thirds of one layer each, two
steps apart; yet each layer still scales the gradient by the same factor. For
y = W x, ||dL/dx||^2 = n_in Var(W) ||dL/dy||^2 on average (each of the n_in entries of
W^T g sums n_out terms of variance Var(W) E[g^2]), and an elementwise activation scales
it by E[phi'(z)^2]. So from one weight layer's dL/d(output) to the one below it the L2
norm changes by sqrt(chi_1), chi_1 = s_w^2 E[phi'(z)^2] with s_w^2 = n_in Var(W)
(Schoenholz et al. 2017; docs/science.md), whatever the widths. The RMS is not width-invariant:
it changes by sqrt(n_out Var(W) E[phi'^2]), so a 10-logit head over a 1024-wide layer
divides it by a further ~10 with nothing wrong (measured on 784-w-w-10 ReLU nets with
default init, first layer over head: norm 0.16-0.18 for w = 8 to 1024, RMS 0.20 to
0.017). For sigmoid with PyTorch's default init (s_w^2 = 1/3, sigmoid' <= 1/4)
chi_1 <= 1/48: the norm falls ~7x per layer (measured 0.14).

The reference is the head, where the gradient enters the net: with two hidden layers
there are two steps, head -> second -> first, with three hidden layers three (the
vanishing rule says which budget each gets). The theory holds only for a plain chain, so
the profile is drawn only when every weight layer reads the one before it directly or
through elementwise activations and pass-through modules (dropout, flatten, identity):
a normalisation layer's backward gain is 1/std of its batch, set by the scale of its
input rather than by chi_1 (BatchNorm ReLU nets fed raw 0-255 pixels read 0.005-0.013,
with LayerNorm 0.007), and pooling or a functional op between layers breaks the
per-layer law (a mean over N positions divides the norm by sqrt(N); a He-init conv net
with global average pooling reads 0.04).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.depth import (
    MIN_HIDDEN_LAYERS,
    Profile,
    elementwise,
    gauge,
    usable,
    weight_layers,
)

MAX_HIDDEN_LAYERS = MIN_HIDDEN_LAYERS
"""Plain chains up to this many hidden layers are measured from the head."""


def feeds(layers: Mapping[str, LayerStats], lower: LayerStats, upper: LayerStats) -> bool:
    """Whether ``upper`` reads ``lower``'s output through elementwise modules only."""
    source = upper.inputs_from
    for _ in range(len(layers) + 1):  # a walk down a chain visits each module once
        if len(source) != 1:
            return False
        if source[0] == lower.name:
            return True
        s = layers.get(source[0])
        # a module called more than once (one Dropout for two places) records the inputs
        # of its first call only: no link of a chain
        if s is None or not elementwise(s) or s.calls != 1:
            return False
        source = s.inputs_from
    return False


def profile(layers: Mapping[str, LayerStats]) -> Profile | None:
    """The head-referenced profile of a plain net with 1 to MAX_HIDDEN_LAYERS hidden
    layers; None for anything else (deeper nets belong to ``depth.profile``)."""
    flow = weight_layers(layers)
    if not 2 <= len(flow) <= MAX_HIDDEN_LAYERS + 1 or not all(usable(s) for s in flow):
        return None
    if not all(feeds(layers, lo, hi) for lo, hi in pairwise(flow)):
        return None
    hidden, head = flow[:-1], flow[-1]
    if gauge(head) <= 0:
        return None
    first, last = hidden[0], hidden[-1]
    forward = (last.out_rms / first.out_rms
               if len(hidden) > 1 and first.out_rms and last.out_rms else None)
    return Profile(hidden, gauge(first), gauge(head), forward, span=len(hidden),
                   output_end="head", gauges=tuple(gauge(s) for s in hidden))
