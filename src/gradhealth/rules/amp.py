"""Mixed precision: GradScaler's skipped steps, calibration or divergence.

``torch.amp.GradScaler`` skips a step whose scaled gradients overflow and halves the loss
scale; at start-up that is calibration, normal and harmless. Once the scale has fallen
below ``AMP_DIVERGENCE_SCALE`` the loss is no longer scaled up at all, so an overflow is
the model's own: divergence (docs/science.md#mixed-precision).
"""

from __future__ import annotations

from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

AMP_DIVERGENCE_SCALE = 1.0
"""GradScaler skips at a loss scale under 1 are divergence, not calibration: the loss is
no longer scaled up, so the overflow is the model's own (with the default init_scale
2**16 and backoff 0.5 that is the 17th skip in a row)."""


def diverged(scale: float) -> bool:
    """Whether a GradScaler skip at loss scale ``scale`` is divergence."""
    return scale < AMP_DIVERGENCE_SCALE


def divergence(step: int, scale: float) -> Finding:
    return Finding(
        kind="nonfinite", module="", severity="critical",
        evidence={"step": step, "pass": "amp", "loss_scale": scale,
                  "threshold": AMP_DIVERGENCE_SCALE},
        prescription=Remedy("amp-float32", params={"loss_scale": scale}),
        message=(f"step {step}: GradScaler skipped a step at loss scale {scale:g} < "
                 f"{AMP_DIVERGENCE_SCALE:g}: this is divergence, not loss-scale calibration"))
