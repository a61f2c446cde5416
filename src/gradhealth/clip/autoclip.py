"""Percentile clipping of the global norm (``AutoClip``, Seetharaman et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradhealth.clip.base import _EPS, ClipResult, _between, _Clipper, _scale_, _whole


class AutoClip(_Clipper):
    """AutoClip (Seetharaman et al. 2020, arXiv:2007.14469): clip the global norm to the
    ``percentile``-th percentile of all global norms seen so far (this one included),
    default 10. ``history``: keep only the last N norms (None: all, as the paper). The
    history is a device tensor (ring buffer, grown by doubling when unbounded); steps
    with non-finite norms are stored as nan and ignored. The reference package clips
    each parameter separately unless told to clip globally; this class always clips the
    global norm."""

    def __init__(self, percentile: float = 10.0, history: int | None = None) -> None:
        super().__init__()
        _between("percentile", percentile, 0.0, 100.0)  # 0: clip to the smallest norm ever
        if history is not None:
            _whole("history", history)
        self.percentile, self.history = percentile, history
        self._buffer: Tensor | None = None
        self._count = 0

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        if self._buffer is None:
            size = self.history or 1024
            self._buffer = torch.full((size,), math.nan, device=pre_norm.device)
        if self.history is None and self._count == self._buffer.numel():
            grown = torch.full((2 * self._count,), math.nan, device=self._buffer.device)
            grown[: self._count] = self._buffer
            self._buffer = grown
        slot = self._count % self._buffer.numel()
        self._buffer[slot] = torch.where(finite, pre_norm, math.nan)
        self._count += 1
        seen = self._buffer[: min(self._count, self._buffer.numel())]
        threshold = torch.nanquantile(seen, self.percentile / 100.0)
        ok = finite & torch.isfinite(threshold)
        coef = torch.where(ok, (threshold / (pre_norm + _EPS)).clamp(max=1.0), 1.0)
        _scale_(grads, coef)
        return ClipResult(pre_norm, ok & (pre_norm > threshold), finite, threshold)
