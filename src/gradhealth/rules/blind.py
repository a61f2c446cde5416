"""A probe that cannot see: a zero output layer passes no gradient to the body.

torchvision's VisionTransformer (and other heads initialised to zero on purpose, so
training starts from the prior) gives dL/d(features) = W_head^T dL/d(logits) = 0 at step
0: every layer below the head gets a zero gradient, and no depth, stream or dead-unit
rule can judge it. Saying "healthy" there would claim what was not measured, so this
rule says the probe is inconclusive for the body (``info``: nothing is wrong with the
model; the first optimizer step makes the head non-zero and the body measurable).
docs/science.md#a-zero-head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    # layers that ran as modules (MultiheadAttention's out_proj is read, never called)
    weighted = sorted((s for s in layers.values() if s.role == "layer" and s.calls
                       and s.weight_norm is not None and s.grad_norm is not None),
                      key=lambda s: s.order)
    if len(weighted) < 2:
        return []
    head = weighted[-1]
    if head.weight_norm != 0 or not head.grad_norm:  # a live head, or no loss reached it
        return []
    body = weighted[:-1]
    if any(s.grad_norm for s in body):
        return []
    return [Finding(
        kind="inconclusive", module=head.name, severity="info",
        evidence={"head_weight_norm": 0.0, "head_grad_norm": head.grad_norm,
                  "body_layers_with_zero_gradient": len(body)},
        modules=(head.name,), prescription=Remedy("probe-zero-head", (head.name,)),
        message=(f"inconclusive for the body: the head `{head.name}` is zero, so "
                 f"dL/d(features) is 0 at initialisation and the {len(body)} layer(s) "
                 f"below it get no gradient to judge"))]
