"""Value clipping: clamp every gradient component (``ClipValue``)."""

from __future__ import annotations

import math

import torch

from gradhealth.clip.base import ClipResult, _Clipper, _groups, _positive, _stack


class ClipValue(_Clipper):
    """Clamp every gradient component to [-clip_value, clip_value] (Keras
    ``SGD(clipvalue=1.0)``, Géron ch. 11). Unlike norm clipping this changes the
    gradient's direction: (0.9, 100) becomes (0.9, 1)."""

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        _positive("clip_value", clip_value)
        self.clip_value = clip_value

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        if self._shards is not None:  # MAX over the shards
            largest = self._shards.norms(grads, math.inf).amax()
        else:
            largest = _stack(torch._foreach_norm(grads, math.inf, dtype=torch.float32)).amax()
        hi = torch.where(finite, self.clip_value, math.inf)
        lo = -hi
        for (device, _), group in _groups(grads).items():
            lo_d, hi_d = lo.to(device), hi.to(device)
            for g in group:  # measured on an H100: 2x faster than foreach maximum/minimum
                g.clamp_(lo_d, hi_d)
        return ClipResult(pre_norm, finite & (largest > self.clip_value), finite)
