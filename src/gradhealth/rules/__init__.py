"""Rules: pure functions from per-layer records to findings, one rule per file.

Each rule module exposes ``check(layers, meta) -> list[Finding]`` and keeps every
threshold as a named constant with its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import (
    adam_epsilon,
    attention,
    blind,
    dead_units,
    exploding,
    logit_divergence,
    nonfinite,
    saturation,
    stream,
    through_time,
    vanishing,
)
from gradhealth.rules.finding import SEVERITY_ORDER, Finding

RULES = (nonfinite, vanishing, exploding, stream, through_time, saturation, dead_units,
         attention, logit_divergence, adam_epsilon, blind)


def run_rules(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    """Every rule's findings, worst first, then in forward order of the module."""
    findings = [f for rule in RULES for f in rule.check(layers, meta)]
    if meta.get("zero_head"):  # a zero head, not the body, made the gradient zero
        findings = [f for f in findings if f.kind not in ("vanishing", "exploding")]
    order = {name: s.order for name, s in layers.items()}
    return sorted(findings, key=lambda f: (-SEVERITY_ORDER[f.severity], order.get(f.module, 0)))
