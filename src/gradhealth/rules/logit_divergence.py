"""Output-logit divergence: the softmax normaliser log Z of the output drifting far from 0.

Chowdhery et al. 2022 (PaLM) hold log Z near 0 with the z-loss 1e-4 * log^2 Z "to
increase the stability of training"; Wortsman et al. 2023 (Sec. 3.2) reproduce the
divergence in small models, the logits becoming very negative late in training. log Z
itself is free (the softmax is unchanged by a shift of the logits), so no paper gives a
limit; ours is a number format's (docs/science.md#transformer-era-instabilities): past
``LOG_Z_LIMIT`` = 64 a bfloat16 logit is rounded to a multiple of 0.5 (8 significant
bits), an error of up to 0.25 in every log-probability, and the drift has left the
range where log Z sits in healthy training (its start is ln(classes): 10.8 for GPT-2's
50257 tokens; our lab's healthy runs stay within 3.5-5 for 32 classes).

The drift is of the logits' common level, which the softmax ignores and the z-loss
corrects: log Z = mean + logsumexp(logits - mean), and the rule asks that the mean make
at least ``DRIFT_SHARE`` of log Z. Logits far apart (an exploding forward pass: a 20-layer
ReLU net at 1.5x He init has log Z ~1700 with mean logit ~0) are a scale problem of the
layers before, which the depth rules and an init fix answer, not the z-loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

LOG_Z_LIMIT = 64.0
DRIFT_SHARE = 0.5
Z_LOSS_COEF = 1e-4
"""The z-loss coefficient prescribed (and ``gradhealth.z_loss``'s default): Chowdhery et al.
2022 (PaLM, Sec. 5), and Wortsman et al. 2023's default."""


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    findings = []
    for s in layers.values():
        if s.log_z is None or abs(s.log_z) <= LOG_Z_LIMIT:
            continue
        if s.out_mean is not None and abs(s.out_mean) < DRIFT_SHARE * abs(s.log_z):
            continue  # the logits are spread, not shifted
        findings.append(Finding(
            kind="logit_divergence", module=s.name, severity="warning",
            evidence={"log_z": s.log_z, "log_z_max": s.log_z_max, "threshold": LOG_Z_LIMIT,
                      "mean_logit": s.out_mean, "classes": s.log_z_classes},
            prescription=Remedy("z-loss", (s.name,), {"coef": Z_LOSS_COEF, "log_z": s.log_z}),
            modules=(s.name,),
            message=(f"log Z of the output logits of `{s.name or 'the model'}` averages "
                     f"{s.log_z:.3g}, beyond +-{LOG_Z_LIMIT:g}: the logits have drifted")))
    return findings
