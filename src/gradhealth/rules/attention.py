"""Attention logit growth: query-key logits so large that attention rows are one-hot.

Dehghani et al. 2023 (ViT-22B, Sec. 3.1.1 of Wortsman et al. 2023 for small models): in
unstable runs the pre-softmax logits q.k/sqrt(d) grow until the attention weights are
almost one-hot, with entropy near 0, and then the loss diverges; qk-layernorm removes it.
The rule fires when an attention module's largest |logit| exceeds ``LOGIT_LIMIT`` *and*
its lowest head's mean row entropy is below ``ENTROPY_FRACTION`` of the uniform
attention's (ln of the keys attended): a large logit alone can be one sharp, useful head;
collapsed rows with small logits are a head that attends to one token by design. Neither
paper gives a number: both thresholds are derived from our measurements
(docs/science.md#transformer-era-instabilities).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

LOGIT_LIMIT = 100.0
"""Derived from our measurement: healthy pre-LN runs stay at 2-4 at init and below 32
while training at the best learning rate (the wortsman2023 lab, lr 1e-2); runs that grow
pass 100 some 40 steps before their loss rises (lr 1e-1); q/k scaled 12x: 290-440."""
ENTROPY_FRACTION = 0.25
"""Derived from our measurement: healthy heads keep 0.6-0.96 of the uniform entropy
(trained and at init), rows behind logits past 100 keep under 0.2, and q/k scaled 12x
0.05."""
COLLAPSED_FRACTION = 0.05
"""Critical below this: the rows are one-hot for all practical purposes (the scaled-q/k
case: 0.16-0.20 nats of 3.47)."""


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    findings = []
    for s in sorted(layers.values(), key=lambda s: s.order):
        if s.attn_logit_max is None or s.attn_entropy_min is None or not s.attn_entropy_uniform:
            continue
        fraction = s.attn_entropy_min / s.attn_entropy_uniform
        if s.attn_logit_max <= LOGIT_LIMIT or fraction >= ENTROPY_FRACTION:
            continue
        findings.append(Finding(
            kind="attention_logit_growth", module=s.name,
            severity="critical" if fraction < COLLAPSED_FRACTION else "warning",
            evidence={"logit_max": s.attn_logit_max, "logit_rms": s.attn_logit_rms,
                      "logit_threshold": LOGIT_LIMIT, "entropy_min": s.attn_entropy_min,
                      "entropy_mean": s.attn_entropy, "entropy_uniform": s.attn_entropy_uniform,
                      "entropy_fraction": fraction, "entropy_threshold": ENTROPY_FRACTION,
                      "heads": s.attn_heads},
            prescription=Remedy("qk-layernorm", (s.name,),
                                {"logit_max": s.attn_logit_max, "entropy_fraction": fraction}),
            modules=(s.name,),
            message=(f"attention logits of `{s.name}` reach {s.attn_logit_max:.3g} (over "
                     f"{LOGIT_LIMIT:g}) and its lowest head keeps {fraction:.0%} of the "
                     f"uniform entropy: the rows are almost one-hot")))
    return findings
