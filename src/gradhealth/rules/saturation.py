"""Saturated bounded activations (sigmoid, tanh, softsign, hardtanh, ...).

Glorot & Bengio 2010 (Sec. 3.1, Fig. 2) show the top sigmoid layer of a deep net driven
to 0 at the start of training, where its derivative vanishes; the bands themselves are in
``gradhealth.measure.catalog``. A layer is judged saturated when more than
``SATURATION_FRACTION`` of its outputs lie in the band: more than half of the units then
pass under 4-8% of the activation's peak derivative. Healthy Glorot-tanh nets at init
keep a few percent of units there (|z| > 2.3 at unit pre-activation variance: ~2%).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import activation
from gradhealth.rules.dead_units import span
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

SATURATION_FRACTION = 0.5
CRITICAL_FRACTION = 0.9


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    """One finding for all saturated layers (named by the worst), not one per layer."""
    saturated = {s.name: s.saturation for s in layers.values()
                 if s.saturation is not None and s.saturation > SATURATION_FRACTION}
    sick = sorted((layers[n] for n in saturated), key=lambda s: s.order)
    if not sick:
        return []
    worst = max(sick, key=lambda s: saturated[s.name])
    fraction = saturated[worst.name]
    feeders = [layers[n] for s in sick for n in s.inputs_from
               if n in layers and layers[n].role == "layer"]
    remedy = Remedy("desaturate", tuple(s.name for s in feeders),
                    {"fan_in_var": activation.init_scale(feeders), "activation": worst.activation})
    return [Finding(
        kind="saturation", module=worst.name,
        severity="critical" if fraction > CRITICAL_FRACTION else "warning",
        evidence={"saturated_fraction": fraction, "threshold": SATURATION_FRACTION,
                  "activation": worst.activation, "layers_saturated": len(sick),
                  "fractions": {s.name: round(saturated[s.name], 4) for s in sick},
                  "out_mean": worst.out_mean, "out_std": worst.out_std, **span(meta)},
        prescription=remedy,
        modules=(worst.name,) + tuple(s.name for s in sick if s is not worst),
        message=(f"{len(sick)} activation layer(s) saturated; worst `{worst.name}` with "
                 f"{worst.saturation:.0%} of its outputs where the derivative is near 0"))]
