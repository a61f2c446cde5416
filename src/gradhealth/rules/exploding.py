"""Exploding gradients through depth.

Fires when the gradient at the input end is over ``EXPLODING_RATIO`` times that at the
output end: the mirror image of the vanishing rule (Pascanu et al. 2013, Sec. 2.1: the
product of layer Jacobians grows geometrically when their norms exceed 1).

Nets too shallow for the depth profile get no exploding finding: the vanishing rule's
shallow budget rests on chi_c = chi_1, which holds in the ordered phase only; in the
chaotic phase the trainable depth is set by the correlation map (c* < 1), not by the
gradient factor, so a growth ratio over one or two layers has no published bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import activation, depth
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

EXPLODING_RATIO = 1e2
CRITICAL_RATIO = 1e4
CLIP_NORM = 1.0
"""The clip threshold to use until the init is fixed. The probe sees no training norms to
scale it by (Pascanu et al. 2013, Sec. 3.2: 0.5-10x the typical norm), so a common default."""


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    p = depth.profile(layers)
    if p is None or p.ratio <= EXPLODING_RATIO:
        return []
    group = depth.affected(p, above=EXPLODING_RATIO) or p.hidden[:1]
    kind = activation.dominant_activation(layers, group)
    evidence = depth.evidence(p, group, EXPLODING_RATIO, kind, activation.init_scale(group),
                              "layers_above_threshold")
    meanwhile = Remedy("clip-global-norm", params={"max_norm": CLIP_NORM, "stopgap": True})
    remedy = activation.init_remedy(kind, group, "amplify", then=(meanwhile,))
    return [Finding(
        kind="exploding",
        module=group[0].name,
        severity="critical" if p.ratio > CRITICAL_RATIO else "warning",
        evidence=evidence,
        prescription=remedy,
        message=(f"the gradient reaching `{group[0].name}` is {p.ratio:.3g}x that at the "
                 f"output end ({p.per_layer:.3g}x per layer over {len(p.hidden) + 1} layers)"),
        modules=tuple(s.name for s in group),
    )]
