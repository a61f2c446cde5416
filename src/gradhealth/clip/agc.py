"""Adaptive gradient clipping, unit-wise (``AGC``, Brock et al. 2021)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from gradhealth.clip.base import (
    ClipResult,
    _Clipper,
    _groups,
    _local_shards,
    _positive,
    _stack,
)
from gradhealth.measure import distributed
from gradhealth.measure.shards import Shards


class AGC(_Clipper):
    """Adaptive gradient clipping, unit-wise (Brock et al. 2021, sec. 4, eq. 3).

    For each unit i: if ||G_i|| / max(||W_i||, eps) > clipping, G_i <- clipping *
    max(||W_i||, eps) * G_i / ||G_i||. A unit is an output unit: a row of a Linear
    weight, an output filter of a ConvNd (all dims but 0; dim 1 for ConvTranspose,
    whose weight is stored (in, out, ...)); biases and other 1-D tensors are one unit.
    clipping=0.01 suits large batches; eps=1e-3 (paper). The paper does not clip the
    final linear layer: given a module, the last ``nn.Linear`` in module order is
    excluded unless ``exclude`` (qualified module or parameter names) says otherwise.
    """

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3,
                 exclude: Iterable[str] | None = None) -> None:
        super().__init__()
        _positive("clipping", clipping)
        _positive("eps", eps)
        self.clipping, self.eps = clipping, eps
        self.exclude = None if exclude is None else tuple(exclude)
        self._cache: tuple | None = None

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        # floor = 0 keeps coef; floor = 1 (non-finite step) makes every coef 1 (fmax drops nan)
        floor = (~finite).float()
        if self._shards is not None:
            return self._clip_shards(self._shards, parameters, params, pre_norm, finite, floor)
        whole, smallest = [], []
        for p, unit_dim in self._plan(parameters, params):
            if p.grad is None:
                continue
            if p.ndim <= 1:  # one unit: batched below with fused foreach kernels
                whole.append(p)
                continue
            coef = self._coef(_unit_norm(p.detach(), unit_dim), _unit_norm(p.grad, unit_dim))
            coef = torch.fmax(coef, floor.to(coef.device))
            p.grad.mul_(coef)
            smallest.append(coef.amin())
        for (device, _), group in _groups(whole).items():
            w = _stack(torch._foreach_norm([p.detach() for p in group], 2.0, dtype=torch.float32))
            g = _stack(torch._foreach_norm([p.grad for p in group], 2.0, dtype=torch.float32))
            coef = torch.fmax(self._coef(w, g), floor.to(device))
            torch._foreach_mul_([p.grad for p in group], list(coef.unbind()))
            smallest.append(coef.amin())
        if not smallest:
            return ClipResult(pre_norm, torch.zeros_like(finite), finite)
        return ClipResult(pre_norm, _stack(smallest).amin() < 1.0, finite)

    def _clip_shards(self, shards: Shards, parameters, params, pre_norm, finite,
                     floor) -> ClipResult:
        """FSDP2: units' norms over the full parameters, clip factors applied to the shards."""
        plan = [(p, grad, d) for p, d in self._plan(parameters, params)
                if (grad := p.grad) is not None]
        dims = [d for _, _, d in plan]
        w = shards.unit_norms([p.detach() for p, _, _ in plan], dims)
        g = shards.unit_norms([grad for _, grad, _ in plan], dims)
        bound = torch.zeros((), dtype=torch.float32, device=pre_norm.device)
        for (_, grad, _), w_norm, g_norm in zip(plan, w, g):
            coef = torch.fmax(self._coef(w_norm, g_norm), floor.to(w_norm.device))
            _local_shards([grad])[0].mul_(coef)
            if coef.numel():  # a rank's shard of a small parameter can be empty
                bound = torch.maximum(bound, (coef.amin() < 1.0).float().to(bound.device))
        return ClipResult(pre_norm, distributed.reduce_max_(bound) > 0, finite)

    def _coef(self, w_norm: Tensor, g_norm: Tensor) -> Tensor:
        """min(1, clipping max(||W_i||, eps) / ||G_i||), in place on the norm buffers."""
        bound = w_norm.clamp_(min=self.eps).mul_(self.clipping)
        return bound.div_(g_norm.clamp_(min=torch.finfo(torch.float32).tiny)).clamp_(max=1.0)

    def _plan(self, parameters, params) -> list[tuple[Tensor, int]]:
        if not isinstance(parameters, nn.Module):
            return [(p, 0) for p in params]
        # the plan holds the parameters, so a reused id with the same first parameter
        # really is the same model
        key = (id(parameters), len(params), id(params[0]) if params else 0)
        if self._cache is None or self._cache[0] != key:  # walk the tree once, not per step
            self._cache = (key, self._build_plan(parameters))
        return self._cache[1]

    def _build_plan(self, model: nn.Module) -> list[tuple[Tensor, int]]:
        modules = list(model.named_modules())
        exclude = self.exclude
        if exclude is None:
            linears = [n for n, m in modules if isinstance(m, nn.Linear)]
            exclude = tuple(linears[-1:])
        plan, seen = [], set()
        for mname, module in modules:
            unit_dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
            for pname, p in module.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                skip = any(full == e or full.startswith(e + ".") or (e == "" == mname)
                           for e in exclude)
                if not skip and id(p) not in seen:  # a shared parameter is clipped once
                    seen.add(id(p))
                    plan.append((p, unit_dim))
        return plan


def _unit_norm(x: Tensor, unit_dim: int) -> Tensor:
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    dims = tuple(d for d in range(x.ndim) if d != unit_dim)
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
