"""Dead rectifier units: zero for every example of the batch, so no gradient reaches them.

A ReLU unit with output 0 across the whole batch passes no gradient to its incoming
weights (docs/science.md#dead-units). Healthy deep nets at init show some
batch-constant zero units (a 10-layer He-init ReLU net ~12% on a batch of 256), so the
rule fires only past ``DEAD_FRACTION`` of a layer's units, and needs a batch of at least
``MIN_BATCH`` examples (a healthy unit is zero for all of N examples with probability
~2^-N). During training the fraction comes over a span of sampled batches
(``rules.examples``): the meta then names the span (``span_first``, ``span_samples``,
``span_examples``), and the finding its first step as the onset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

DEAD_FRACTION = 0.5
CRITICAL_FRACTION = 0.9
MIN_BATCH = 16
LEAKY_SLOPE = 0.2
"""The Leaky ReLU slope offered in place of a dead rectifier: near the "very leaky" 1/5.5
that Xu et al. 2015 found to train better than the usual 0.01."""


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    batch = meta.get("batch_size")
    if batch is not None and batch < MIN_BATCH:
        return []
    findings = []
    for s in sorted(layers.values(), key=lambda s: s.order):
        if s.dead_fraction is None or s.dead_fraction <= DEAD_FRACTION:
            continue
        feeders = [n for n in s.inputs_from if n in layers and layers[n].role == "layer"]
        remedy = Remedy("revive", tuple(feeders[:1]),
                        {"activation_layer": s.name, "slope": LEAKY_SLOPE})
        findings.append(Finding(
            kind="dead_units", module=s.name,
            severity="critical" if s.dead_fraction >= CRITICAL_FRACTION else "warning",
            evidence={"dead_fraction": s.dead_fraction, "threshold": DEAD_FRACTION,
                      "batch_size": batch, "fed_by": feeders[0] if feeders else None,
                      **span(meta)},
            prescription=remedy, modules=(s.name,),
            message=f"{s.dead_fraction:.0%} of `{s.name}`'s units are zero for {over(meta)}"))
    return findings


def span(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence of a verdict over several sampled batches: the onset (the first
    sample of the span) and how many samples and examples it holds; nothing for a probe."""
    samples = meta.get("span_samples")
    if not samples:
        return {}
    return {"onset_step": meta.get("span_first"), "samples": samples,
            "examples": meta.get("span_examples")}


def over(meta: Mapping[str, Any]) -> str:
    """``the whole batch``, or the span of sampled batches a watch's verdict rests on."""
    samples = meta.get("span_samples")
    if not samples or samples < 2:
        return "the whole batch"
    examples = meta.get("span_examples")
    seen = f", {examples} examples" if examples else ""
    return (f"every example of the {samples} sampled batches from step "
            f"{meta.get('span_first')}{seen}")
