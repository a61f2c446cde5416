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
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping

from gradhealth.findings import LayerStats

MIN_HIDDEN_LAYERS = 3
"""Fewer weight layers below the head than this make no depth to judge."""


@dataclass(frozen=True)
class Profile:
    hidden: list[LayerStats]  # weight layers below the output layer, input first
    bottom: float  # median gradient norm over the input-end third
    top: float  # median gradient norm over the output-end third
    forward_ratio: float | None  # output RMS, output end / input end
    span: int  # layer-to-layer steps between the two ends
    output_end: str = "hidden"  # "hidden": the output-end third; "head": the output layer

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


def weight_layers(layers: Mapping[str, LayerStats]) -> list[LayerStats]:
    """Weight layers that ran, in forward order; the last is the output layer (the head)."""
    return sorted((s for s in layers.values() if s.role == "layer" and s.calls),
                  key=lambda s: s.order)


def profile(layers: Mapping[str, LayerStats]) -> Profile | None:
    hidden = [s for s in weight_layers(layers)[:-1] if usable(s)]
    if len(hidden) < MIN_HIDDEN_LAYERS:
        return None
    k = max(1, len(hidden) // 3)
    bottom = statistics.median(s.grad_norm for s in hidden[:k])
    top = statistics.median(s.grad_norm for s in hidden[-k:])
    if top <= 0 or not math.isfinite(top):
        return None
    out_lo = [s.out_rms for s in hidden[:k] if s.out_rms]
    out_hi = [s.out_rms for s in hidden[-k:] if s.out_rms]
    forward = statistics.median(out_hi) / statistics.median(out_lo) if out_lo and out_hi else None
    return Profile(hidden, bottom, top, forward, span=max(len(hidden) - k, 1))


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
        "depth": len(p.hidden) + 1,
        "activation": activation,
        "fan_in_var": fan_in_var,
        count_key: len(group),
    }


def affected(p: Profile, below: float | None = None, above: float | None = None) -> list[LayerStats]:
    """Hidden layers whose gradient norm lies below (or above) a multiple of the top's."""
    out = []
    for s in p.hidden:
        r = s.grad_norm / p.top
        if (below is not None and r < below) or (above is not None and r > above):
            out.append(s)
    return out
