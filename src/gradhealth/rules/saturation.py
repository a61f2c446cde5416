"""Saturated bounded activations (sigmoid, tanh, softsign, hardtanh, ...).

Glorot & Bengio 2010 (Sec. 3.1, Fig. 2) show the top sigmoid layer of a deep net driven
to 0 at the start of training, where its derivative vanishes; the bands themselves are in
``gradhealth.catalog``. A layer is judged saturated when more than
``SATURATION_FRACTION`` of its outputs lie in the band: more than half of the units then
pass under 4-8% of the activation's peak derivative. Healthy Glorot-tanh nets at init
keep a few percent of units there (|z| > 2.3 at unit pre-activation variance: ~2%).
"""

from __future__ import annotations

from typing import Any, Mapping

from gradhealth.findings import Finding, LayerStats
from gradhealth.rules import remedies

SATURATION_FRACTION = 0.5
CRITICAL_FRACTION = 0.9


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    findings = []
    for s in sorted(layers.values(), key=lambda s: s.order):
        if s.saturation is None or s.saturation <= SATURATION_FRACTION:
            continue
        feeders = [layers[n] for n in s.inputs_from if n in layers and layers[n].role == "layer"]
        if feeders:
            scale = remedies.init_scale(feeders)
            measured = f" (fan_in*Var(W) = {scale:.3g})" if scale is not None else ""
            where = f"the layer feeding it, {remedies.names(feeders)}{measured}"
        else:
            where = "the layer feeding it"
        remedy = (f"Pre-activations are too large: re-initialise {where} with Glorot init "
                  f"(torch.nn.init.xavier_normal_ with the activation's gain), or insert "
                  f"nn.BatchNorm1d before `{s.name}` (Ioffe & Szegedy 2015), or switch to a "
                  f"non-saturating activation (nn.ReLU / nn.ELU with He init).")
        findings.append(Finding(
            kind="saturation", module=s.name,
            severity="critical" if s.saturation > CRITICAL_FRACTION else "warning",
            evidence={"saturated_fraction": s.saturation, "threshold": SATURATION_FRACTION,
                      "activation": s.activation, "out_mean": s.out_mean, "out_std": s.out_std},
            remedy=remedy, modules=(s.name,),
            message=f"{s.saturation:.0%} of `{s.name}`'s outputs sit where its derivative is near 0"))
    return findings
