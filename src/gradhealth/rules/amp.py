"""Mixed precision: GradScaler's skipped steps, calibration or divergence.

``torch.amp.GradScaler`` skips a step whose scaled gradients overflow and halves the loss
scale; at start-up that is calibration, normal and harmless. Once the scale has fallen
below ``AMP_DIVERGENCE_SCALE`` the loss is no longer scaled up at all, so an overflow is
the model's own: divergence (docs/science.md#mixed-precision).
"""

from __future__ import annotations

from gradhealth.rules.finding import Finding

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
        remedy=("GradScaler keeps finding Inf/NaN even with the loss scaled down below 1: "
                "the model itself overflows or produces NaN. Run gh.probe on a batch, or "
                "watch with guard=True to name the module that produces it; compute the "
                "offending operation in float32 (autocast(enabled=False) around it)."),
        message=(f"step {step}: GradScaler skipped a step at loss scale {scale:g} < "
                 f"{AMP_DIVERGENCE_SCALE:g}: this is divergence, not loss-scale calibration"))
