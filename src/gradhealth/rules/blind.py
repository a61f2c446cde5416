"""A probe that cannot see: a zero output layer passes no gradient to the body.

torchvision's VisionTransformer (and other heads initialised to zero on purpose, so
training starts from the prior) gives dL/d(features) = W_head^T dL/d(logits) = 0 at step
0: every layer below the head gets a zero gradient, and no depth, stream or dead-unit
rule can judge it. The probe then measures once more with a temporary random head in its
place (``measure.head``, ``meta["random_head"]``): the body is judged on that pass and
this rule says how it was seen. Where the head could not be replaced
(``meta["zero_head"]``), it says the probe is inconclusive for the body rather than
"healthy", and ``run_rules`` drops the depth findings that read the zero gradient as
vanishing. Both are ``info``: a zero head is a
deliberate init and nothing to change (docs/science.md#a-zero-head).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    substituted = meta.get("random_head")
    if isinstance(substituted, str):
        return [Finding(
            kind="zero_head", module=substituted, severity="info",
            evidence={"head_weight_norm": 0.0, "measured_with": "a random head N(0, 1/fan_in)"},
            modules=(substituted,),
            prescription=Remedy("probe-zero-head", (substituted,), {"measured": True}),
            message=(f"the head `{substituted}` is zero at initialisation, so dL/d(features) "
                     f"is 0 there: the body was measured with a temporary random head "
                     f"N(0, 1/fan_in) in its place (restored after)"))]
    blind = meta.get("zero_head")
    if not isinstance(blind, Mapping):
        return []
    name, below = str(blind.get("module")), blind.get("layers_below")
    return [Finding(
        kind="inconclusive", module=name, severity="info",
        evidence={"head_weight_norm": 0.0, "body_layers_with_zero_gradient": below},
        modules=(name,), prescription=Remedy("probe-zero-head", (name,)),
        message=(f"inconclusive for the body: the head `{name}` is zero, so dL/d(features) "
                 f"is 0 at initialisation and the {below} layer(s) below it get no "
                 f"gradient to judge"))]
