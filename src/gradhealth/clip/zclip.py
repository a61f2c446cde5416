"""Z-score spike clipping of the global norm (``ZClip``, Kumar et al. 2025)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradhealth.clip.base import _EPS, ClipResult, _between, _Clipper, _positive, _scale_, _whole


class ZClip(_Clipper):
    """ZClip (Kumar et al. 2025, arXiv:2504.02507): z-score spike clipping of the global
    norm against an EMA mean mu and variance s^2 (alpha=0.97).

    The first ``warmup_steps`` (25) norms are only recorded; mu and s^2 start as their
    mean and variance. Then z = (g - mu)/(s + eps); if z > z_thresh (2.5) the gradient is
    scaled to norm mu + z_thresh^2 s / z (the paper's reciprocal clipping: the bigger the
    spike, the harder the clip). The EMA is updated with the clipped norm, not the raw
    one: mu <- alpha mu + (1-alpha) g', s^2 <- alpha s^2 + (1-alpha)(g' - mu)^2 (new mu,
    as the reference implementation). Non-finite steps do not touch the EMA.
    """

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, warmup_steps: int = 25,
                 eps: float = 1e-6) -> None:
        super().__init__()
        _between("alpha", alpha, 0.0, 1.0, high_open=True)
        _positive("z_thresh", z_thresh)
        _whole("warmup_steps", warmup_steps)
        _positive("eps", eps)
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps
        self._warm: Tensor | None = None
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        if self.steps < self.warmup_steps:
            warm = self._warm
            if warm is None:
                warm = torch.full((self.warmup_steps,), math.nan, device=pre_norm.device)
                self._warm = warm
            warm[self.steps] = torch.where(finite, pre_norm, math.nan)
            if self.steps + 1 == self.warmup_steps:
                self._end_warmup(warm)
            inf = torch.full((), math.inf, device=pre_norm.device)
            return ClipResult(pre_norm, torch.zeros_like(finite), finite, inf)
        mean, var = self.mean, self.var
        if mean is None or var is None:
            # the warm-up's last step had no gradient, so it never got here: end it now; with
            # no norm recorded at all, mu = nan as after a warm-up of only non-finite norms
            if self._warm is None:
                self._warm = torch.full((self.warmup_steps,), math.nan, device=pre_norm.device)
            mean, var = self._end_warmup(self._warm)
        std = var.sqrt()
        z = (pre_norm - mean) / (std + self.eps)
        spike = finite & (z > self.z_thresh)
        target = mean + self.z_thresh**2 * std / z
        coef = torch.where(spike, target / (pre_norm + _EPS), 1.0)
        _scale_(grads, coef)
        value = torch.where(spike, target, pre_norm)
        new_mean = self.alpha * mean + (1 - self.alpha) * value
        new_var = self.alpha * var + (1 - self.alpha) * (value - new_mean) ** 2
        # A warm-up of only non-finite norms leaves mu = nan: start from the first finite.
        start = torch.isnan(mean)
        new_mean = torch.where(start, value, new_mean)
        new_var = torch.where(start, 0.0, new_var)
        self.mean = torch.where(finite, new_mean, mean)
        self.var = torch.where(finite, new_var, var)
        return ClipResult(pre_norm, spike, finite, mean + self.z_thresh * (std + self.eps))

    def _end_warmup(self, warm: Tensor) -> tuple[Tensor, Tensor]:
        """mu and s^2: the mean and variance of the finite warm-up norms."""
        mean = torch.nanmean(warm)
        var = torch.nanmean((warm - mean) ** 2)
        self.mean, self.var = mean, var
        return mean, var
