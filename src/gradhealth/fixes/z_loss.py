"""The z-loss: an auxiliary loss that holds the output softmax's log Z near 0.

PaLM (Chowdhery et al. 2022, Sec. 5) adds 1e-4 * log^2 Z, Z the softmax normaliser of the
output logits, "to encourage the softmax normalizer log(Z) to be close to 0", which they
found increases the stability of training; Wortsman et al. 2023 (Sec. 3.2) show it
removes the output-logit divergence of small models at high learning rates
(docs/science.md#transformer-era-instabilities). It is a term of the training loss, not
a change to the model, so it is a function the loop calls (``gradhealth.z_loss``)::

    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, -2), y.flatten()) + gh.z_loss(logits)
"""

from __future__ import annotations

import math

import torch

from gradhealth.errors import ConfigError, describe
from gradhealth.rules.logit_divergence import Z_LOSS_COEF

__all__ = ["Z_LOSS_COEF", "z_loss"]


def z_loss(logits: torch.Tensor, coef: float = Z_LOSS_COEF,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """``coef`` * the mean over positions of log^2 Z, log Z = logsumexp(logits, -1).

    ``logits``: (..., classes), any float dtype (reduced in float32). ``mask``: a bool
    tensor of the leading shape, True at the positions to count (padding left out);
    a mask with no True position gives 0.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() \
            or logits.dim() < 1:
        raise ConfigError(f"z_loss expects the output logits, a float tensor (..., classes), "
                          f"got {describe(logits)}")
    if (not isinstance(coef, (int, float)) or isinstance(coef, bool) or not math.isfinite(coef)
            or coef < 0):
        raise ConfigError(f"z_loss(coef=...) expects a non-negative number such as 1e-4 "
                          f"(PaLM's), got {coef!r}")
    log_z = torch.logsumexp(logits.float(), dim=-1)
    if mask is None:
        return coef * log_z.square().mean()
    if not isinstance(mask, torch.Tensor) or mask.shape != log_z.shape:
        raise ConfigError(f"z_loss(mask=...) expects a bool tensor of shape "
                          f"{tuple(log_z.shape)} (the logits' without the class axis), got "
                          f"{describe(mask)}")
    kept = mask.to(torch.bool)
    return coef * log_z.square().masked_fill(~kept, 0.0).sum() / kept.sum().clamp_min(1)
