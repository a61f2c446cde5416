"""The gradient profile through depth, shared by the vanishing and exploding rules.

Signal-propagation theory (Glorot & Bengio 2010, Sec. 4.2; He et al. 2015, Sec. 2.2)
predicts that each layer multiplies the back-propagated gradient by
n_out * Var(W) * E[phi'(z)^2]; away from 1 the product over depth is geometric. We
measure it directly: the L2 norm of dL/d(output) of every weight layer, in forward
order. The output layer is left out (its gradient is set by the loss, not by
propagation), and the input end is compared with the output end by the median of a
third of the layers at each end, so one oddly-scaled layer (an attention query, a
bottleneck) cannot decide alone. Nets too shallow for thirds are judged by
``rules/chain.py`` instead, from the head.

A weight layer whose output only a normalisation layer reads (through elementwise
modules) is read after that layer, at dL/d(normalised output): see ``normalised``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from gradhealth.measure import catalog
from gradhealth.measure.layer import LayerStats

MIN_HIDDEN_LAYERS = 3
"""Fewer weight layers below the head than this make no depth to judge."""

_PASS_THROUGH = frozenset(cls.__name__ for cls in catalog.PASS_THROUGH)  # no norms in it
_NOT_SCALE_FREE = frozenset({"LocalResponseNorm"})
"""Norms whose output changes with the scale of their input: x / (k + a sum x^2)^b."""


@dataclass(frozen=True)
class Profile:
    hidden: list[LayerStats]  # weight layers below the output layer, input first
    bottom: float  # median gradient norm over the input-end third
    top: float  # median gradient norm over the output-end third
    forward_ratio: float | None  # output RMS, output end / input end
    span: int  # layer-to-layer steps between the two ends
    output_end: str = "hidden"  # "hidden": the output-end third; "head": the output layer
    gauges: tuple[float, ...] = ()  # the gradient norm each hidden layer is judged by
    read_after: tuple[tuple[str, str], ...] = ()  # (weight layer, the norm it is read after)

    @property
    def ratio(self) -> float:
        """Gradient norm at the input end over that at the output end (1 = preserved)."""
        return self.bottom / self.top

    @property
    def per_layer(self) -> float:
        """The geometric mean factor per layer over the span between the two ends."""
        return self.ratio ** (1.0 / self.span)


def usable(s: LayerStats) -> bool:
    return s.grad_norm is not None and math.isfinite(s.grad_norm) and s.nonfinite_grad == 0


def gauge(s: LayerStats) -> float:
    """The gradient norm a ``usable`` layer is judged by."""
    assert s.grad_norm is not None, f"{s.name} is not usable"  # callers filter by usable()
    return s.grad_norm


_LOOKUPS = frozenset(cls.__name__ for cls in catalog.LOOKUPS)


def weight_layers(layers: Mapping[str, LayerStats]) -> list[LayerStats]:
    """Weight layers that ran, in forward order; the last is the output layer (the head).

    Embeddings are not among them (docs/science.md#embeddings): a lookup y = E[ids] takes
    no gradient to its input and has no fan-in, so it is no step of the per-layer law
    (n_in Var(W) E[phi'^2]); its dL/d(output) is the gradient of the layer above it at
    its input, and its rows see only the tokens of the batch."""
    return sorted((s for s in layers.values()
                   if s.role == "layer" and s.calls and s.type not in _LOOKUPS),
                  key=lambda s: s.order)


def elementwise(s: LayerStats) -> bool:
    """An activation or a pass-through module (dropout, flatten, identity): no mixing."""
    return s.role == "activation" or (s.role == "other" and s.type in _PASS_THROUGH)


def normalised(layers: Mapping[str, LayerStats]) -> dict[str, LayerStats]:
    """Each weight layer whose output is read by one scale-free normalisation layer only
    (directly or through elementwise modules) -> that normalisation layer.

    Such a layer's dL/d(output) measures the scale of its output, not the gradient that
    propagates. A normalisation layer z = (y - mu) / sigma (BatchNorm in training mode,
    LayerNorm, GroupNorm, InstanceNorm; RMSNorm without mu) gives back
    dL/dy = (1/sigma) (I - P) dL/dz, P projecting out the directions the statistics
    remove (Ioffe & Szegedy 2015, Sec. 3): a layer whose output is c times larger gets a
    gradient c times smaller (a ReLU or dropout between them keeps this exact: positive
    homogeneity). When the scale comes from the input x (raw 0-255 pixels), the weight
    gradient dL/dW = dL/dy x^T is unchanged (1/255 * 255), so nothing is wrong; yet with
    three to five hidden layers a third is one layer and the first layer alone decided:
    BatchNorm, LayerNorm and GroupNorm MLPs and CNNs fed inputs x255 or x1000 read
    0.0007-0.03 (vanishing under 0.01), fed inputs x1e-3 390-1900 (exploding, also with
    eight hidden layers, whose median of two is a mean). dL/dz is the gradient at the
    normalised activation, unit-scale whatever sigma is (at init, gamma = 1,
    sigma ||dL/dy|| = ||(I - P) dL/dz|| for each group the statistics run over), so it
    stands for the layer in the profile. For layers two and up, whose inputs are
    normalised, it rescales each norm by that layer's sigma, which the init sets alike
    from layer to layer (BatchNorm-ReLU nets with 20 hidden layers read 12-15 either
    way). A large output made by large weights is read the same way: the slower
    effective learning rate of a large scale-invariant W (lr / ||W||^2) is a matter of
    scale, not of a gradient that fails to propagate, and no depth rule judges it.

    Only module consumers are visible: a weight layer whose output also enters a
    functional op (``y + ln(y)``) cannot be told from one that does not.
    """
    consumers: dict[str, list[LayerStats]] = defaultdict(list)
    for m in layers.values():
        if m.role != "container":  # a container's call repeats its first child's input
            for source in m.inputs_from:
                consumers[source].append(m)
    out: dict[str, LayerStats] = {}
    for s in weight_layers(layers):
        seen, frontier, ends = {s.name}, [s.name], []
        while frontier:  # every module that reads s's output, through elementwise ones
            for c in consumers.get(frontier.pop(), ()):
                if c.name not in seen:
                    seen.add(c.name)
                    if elementwise(c):
                        frontier.append(c.name)
                    else:
                        ends.append(c)
        if (len(ends) == 1 and ends[0].role == "norm" and ends[0].type not in _NOT_SCALE_FREE
                and usable(ends[0])):
            out[s.name] = ends[0]
    return out


def profile(layers: Mapping[str, LayerStats]) -> Profile | None:
    hidden = [s for s in weight_layers(layers)[:-1] if usable(s)]
    if len(hidden) < MIN_HIDDEN_LAYERS:
        return None
    after = normalised(layers)
    read = [after.get(s.name, s) for s in hidden]  # where each layer's gradient is read
    gauges = tuple(gauge(r) for r in read)
    k = max(1, len(hidden) // 3)
    bottom = statistics.median(gauges[:k])
    top = statistics.median(gauges[-k:])
    if top <= 0 or not math.isfinite(top):
        return None
    out_lo = [r.out_rms for r in read[:k] if r.out_rms]
    out_hi = [r.out_rms for r in read[-k:] if r.out_rms]
    forward = statistics.median(out_hi) / statistics.median(out_lo) if out_lo and out_hi else None
    return Profile(hidden, bottom, top, forward, span=max(len(hidden) - k, 1), gauges=gauges,
                   read_after=tuple((s.name, after[s.name].name) for s in hidden
                                    if s.name in after))


def evidence(p: Profile, group: list[LayerStats], threshold: float, activation: str | None,
             fan_in_var: float | None, count_key: str) -> dict:
    """The numbers shared by the vanishing and exploding findings."""
    return {
        "grad_ratio_input_to_output": p.ratio,
        "threshold": threshold,
        "per_layer_factor": p.per_layer,
        "grad_norm_input_end": p.bottom,
        "grad_norm_output_end": p.top,
        "forward_rms_ratio_output_to_input": p.forward_ratio,
        "output_end": p.output_end,
        "read_after_norm": dict(p.read_after),
        "depth": len(p.hidden) + 1,
        "activation": activation,
        "fan_in_var": fan_in_var,
        count_key: len(group),
    }


def affected(p: Profile, below: float | None = None,
             above: float | None = None) -> list[LayerStats]:
    """Hidden layers whose gradient norm lies below (or above) a multiple of the top's."""
    out = []
    for s, g in zip(p.hidden, p.gauges):
        r = g / p.top
        if (below is not None and r < below) or (above is not None and r > above):
            out.append(s)
    return out
