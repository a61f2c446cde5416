"""Norm clipping: of all gradients together (``ClipNorm``) or of each parameter's
(``ClipNormPerParameter``)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradhealth.clip.base import (
    _EPS,
    ClipResult,
    _Clipper,
    _groups,
    _positive,
    _scale_,
    _stack,
    total_norm,
)


class ClipNorm(_Clipper):
    """Global norm clipping (Pascanu et al. 2013, sec. 3.2): g <- g * max_norm/||g|| when
    the norm of all gradients together exceeds ``max_norm``; direction kept. Same
    result as ``torch.nn.utils.clip_grad_norm_`` and Keras ``global_clipnorm``. The paper
    suggests max_norm of 0.5-10x the average norm."""

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        super().__init__()
        _positive("max_norm", max_norm)
        _positive("norm_type", norm_type, infinite=True)  # inf: the max-norm
        self.max_norm, self.norm_type = max_norm, float(norm_type)
        self._threshold: Tensor | None = None

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        norm = pre_norm
        if self.norm_type != 2.0:
            norm = total_norm(grads, self.norm_type, shards=self._shards)
            finite = torch.isfinite(norm)
        coef = torch.where(finite, (self.max_norm / (norm + _EPS)).clamp(max=1.0), 1.0)
        _scale_(grads, coef)
        if self._threshold is None or self._threshold.device != pre_norm.device:
            self._threshold = torch.full((), self.max_norm, device=pre_norm.device)
        return ClipResult(pre_norm, finite & (norm > self.max_norm), finite, self._threshold)


class ClipNormPerParameter(_Clipper):
    """Keras ``clipnorm``: each parameter tensor's gradient is clipped to norm
    ``max_norm`` separately, so the global norm can still be up to sqrt(n) max_norm
    and the overall direction changes. For one bound on all gradients together
    (Keras ``global_clipnorm``, torch ``clip_grad_norm_``) use ``ClipNorm``."""

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        _positive("max_norm", max_norm)
        self.max_norm = max_norm

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        if self._shards is not None:  # each full parameter's norm, not its shard's
            norms = self._shards.norms(grads)
            coefs = torch.where(finite, (self.max_norm / (norms + _EPS)).clamp(max=1.0), 1.0)
            torch._foreach_mul_(grads, list(coefs.unbind()))
            return ClipResult(pre_norm, (finite & (norms > self.max_norm)).any(), finite)
        binds = []
        for (device, _), group in _groups(grads).items():
            norms = torch.stack(torch._foreach_norm(group, 2.0, dtype=torch.float32))
            ok = finite.to(device)
            coefs = torch.where(ok, (self.max_norm / (norms + _EPS)).clamp(max=1.0), 1.0)
            torch._foreach_mul_(group, list(coefs.unbind()))
            binds.append((ok & (norms > self.max_norm)).any())
        return ClipResult(pre_norm, _stack(binds).any(), finite)
