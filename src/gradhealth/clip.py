"""Gradient clippers: call one after ``loss.backward()`` and before ``optimizer.step()``.

``ClipValue``, ``ClipNorm``, ``ClipNormPerParameter``, ``AGC``, ``AutoClip``, ``ZClip``.
Each call returns a ``ClipResult`` of 0-d tensors on the gradients' device and keeps
``last_pre_norm``, ``bind_count`` (how often clipping changed something, a device
tensor) and ``steps`` (a Python int). Nothing here calls ``.item()``, ``float()`` or
``.cpu()`` on a tensor, and no decision branches on the host: clip factors are device
tensors applied by multiplication, so a clipper never stalls the GPU.

Non-finite gradients: if the global gradient norm is inf or nan, every clipper leaves
the gradients exactly as they are (scaling by max_norm/inf = 0 would turn inf into nan,
and clamping would hide an overflow) and returns ``finite=False``; skip that step
(``torch.amp.GradScaler.step`` does so by itself).

Processes (``torchrun``): under DDP the gradients are all-reduced before clipping, so
the local norm is the global one and nothing more is reduced. Under FSDP2 (gradients
are DTensors) the clippers work on each rank's local shards and reduce the norms over
the shard groups (``gradhealth.distributed``): the global norm, the threshold and the
clip factor are the same on every rank, as are ``clipped`` and ``finite``; AGC's
per-unit norms are the full units', and its ``clipped`` is MAX over ranks. Other
sharding schemes whose gradients are not DTensors (ZeRO, FSDP1 flat parameters) would
need their own reduction and are not supported.

Mixed precision: with ``torch.amp.GradScaler`` the gradients are multiplied by the loss
scale; clip after ``scaler.unscale_(optimizer)``, or pass ``optimizer=`` and
``scaler=`` to the clipper, which unscales first unless already done this step
(``unscale_grads_``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Union

import torch
from torch import Tensor, nn

from gradhealth import distributed
from gradhealth.distributed import Shards
from gradhealth.errors import ConfigError

__all__ = [
    "AGC", "AutoClip", "ClipNorm", "ClipNormPerParameter", "ClipResult", "ClipValue", "ZClip",
    "unscale_grads_",
]

Params = Union[nn.Module, Tensor, Iterable[Tensor]]
_EPS = 1e-6  # as torch.nn.utils.clip_grads_with_norm_: max_norm / (norm + 1e-6)


@dataclass(frozen=True)
class ClipResult:
    """One clipping step. ``pre_norm``: global L2 norm of the gradients before clipping
    (float32, 0-d). ``clipped``: True where clipping changed a gradient. ``finite``:
    False where the gradients were non-finite and left untouched. ``threshold``: the
    largest global norm that passes unclipped this step (inf during ZClip warm-up),
    ``None`` for clippers without one (ClipValue, ClipNormPerParameter, AGC)."""

    pre_norm: Tensor
    clipped: Tensor
    finite: Tensor
    threshold: Tensor | None = None


def unscale_grads_(optimizer: torch.optim.Optimizer | None, scaler) -> bool:
    """``scaler.unscale_(optimizer)`` unless disabled or already done since the last
    ``scaler.update()`` (calling it twice raises). Returns True if it unscaled now."""
    if scaler is None or not scaler.is_enabled():
        return False
    if optimizer is None:
        raise ConfigError("Expected `optimizer=` together with `scaler=`: GradScaler "
                          "unscales per optimizer. Got scaler only.")
    from torch.amp.grad_scaler import OptState

    # GradScaler keeps no public "already unscaled" flag; its per-optimizer stage is
    # what unscale_ itself checks before raising.
    stage = scaler._per_optimizer_states[id(optimizer)]["stage"]
    if stage is OptState.UNSCALED:
        return False
    if stage is OptState.STEPPED:
        raise ConfigError("Expected clipping before scaler.step(optimizer), got a call after "
                          "it. Clip between backward() and step().")
    scaler.unscale_(optimizer)
    return True


class _Clipper:
    """Shared shell: collect gradients, call ``_clip``, keep history."""

    def __init__(self) -> None:
        self.steps = 0
        self.last_pre_norm: Tensor | None = None
        self.bind_count: Tensor | None = None
        self.last_result: ClipResult | None = None
        self._shards: Shards | None = None  # this call's gradients are FSDP2 shards

    def __call__(self, parameters: Params, *, optimizer=None, scaler=None) -> ClipResult:
        unscale_grads_(optimizer, scaler)
        params = _as_params(parameters)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            device = params[0].device if params else torch.device("cpu")
            zero = torch.zeros((), device=device)
            result = ClipResult(zero, zero.bool(), torch.ones((), dtype=torch.bool,
                                                              device=device))
        else:
            self._shards = Shards.of(grads)  # None on one process and under DDP
            if self._shards is not None:
                grads = self._shards.local(grads)  # clip each rank's shard, norms reduced
            with torch.no_grad():  # grads made with create_graph=True still clip in place
                pre_norm = total_norm(grads, shards=self._shards)
                result = self._clip(parameters, params, grads, pre_norm,
                                    torch.isfinite(pre_norm))
        self.steps += 1
        self.last_pre_norm = result.pre_norm
        binds = result.clipped.long()
        self.bind_count = binds if self.bind_count is None else self.bind_count + binds.to(
            self.bind_count.device)
        self.last_result = result
        return result

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        raise NotImplementedError


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


class ClipNorm(_Clipper):
    """Global norm clipping (Pascanu et al. 2013, sec. 3.2): g <- g * max_norm/||g|| when
    the norm of all gradients together exceeds ``max_norm``; direction kept. Same
    result as ``torch.nn.utils.clip_grad_norm_`` and Keras ``global_clipnorm``. The paper
    suggests max_norm of 0.5-10x the average norm."""

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        super().__init__()
        _positive("max_norm", max_norm)
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
        self.clipping, self.eps = clipping, eps
        self.exclude = None if exclude is None else tuple(exclude)
        self._cache: tuple | None = None

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        # floor = 0 keeps coef; floor = 1 (non-finite step) makes every coef 1 (fmax drops nan)
        floor = (~finite).float()
        if self._shards is not None:
            return self._clip_shards(parameters, params, pre_norm, finite, floor)
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

    def _clip_shards(self, parameters, params, pre_norm, finite, floor) -> ClipResult:
        """FSDP2: units' norms over the full parameters, clip factors applied to the shards."""
        plan = [(p, d) for p, d in self._plan(parameters, params) if p.grad is not None]
        dims = [d for _, d in plan]
        w = self._shards.unit_norms([p.detach() for p, _ in plan], dims)
        g = self._shards.unit_norms([p.grad for p, _ in plan], dims)
        bound = torch.zeros((), dtype=torch.float32, device=pre_norm.device)
        for (p, _), w_norm, g_norm in zip(plan, w, g):
            coef = torch.fmax(self._coef(w_norm, g_norm), floor.to(w_norm.device))
            Shards.local([p.grad])[0].mul_(coef)
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
        if not 0.0 <= percentile <= 100.0:
            raise ConfigError(f"Expected 0 <= percentile <= 100, got {percentile}.")
        if history is not None and history < 1:
            raise ConfigError(f"Expected history >= 1 or None, got {history}.")
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
        if not 0.0 < alpha < 1.0 or z_thresh <= 0 or warmup_steps < 1:
            raise ConfigError("Expected 0 < alpha < 1, z_thresh > 0, warmup_steps >= 1, got "
                              f"{alpha}, {z_thresh}, {warmup_steps}.")
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps
        self._warm: Tensor | None = None
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def _clip(self, parameters, params, grads, pre_norm, finite) -> ClipResult:
        if self.steps < self.warmup_steps:
            if self._warm is None:
                self._warm = torch.full((self.warmup_steps,), math.nan, device=pre_norm.device)
            self._warm[self.steps] = torch.where(finite, pre_norm, math.nan)
            if self.steps + 1 == self.warmup_steps:
                self.mean = torch.nanmean(self._warm)
                self.var = torch.nanmean((self._warm - self.mean) ** 2)
            inf = torch.full((), math.inf, device=pre_norm.device)
            return ClipResult(pre_norm, torch.zeros_like(finite), finite, inf)
        mean, var = self.mean, self.var
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


def total_norm(grads: list[Tensor], norm_type: float = 2.0, shards: Shards | None = None,
               ) -> Tensor:
    """Norm of all tensors together, 0-d on the first tensor's device; half-precision
    tensors are reduced in float32 (float16 norms overflow at 65504). Equals
    ``torch.nn.utils.get_total_norm`` for float32 gradients. ``shards``: ``grads`` are
    the local shards of DTensors (``Shards.of(...).local(...)``): the norm of the full
    tensors, the same on every rank."""
    if shards is not None:
        return torch.linalg.vector_norm(shards.norms(grads, norm_type), norm_type)
    norms = []
    for group in _groups(grads).values():
        wide = group[0].dtype in (torch.float16, torch.bfloat16)
        norms.extend(torch._foreach_norm(group, norm_type, dtype=torch.float32 if wide else None))
    return torch.linalg.vector_norm(_stack(norms), norm_type)


def _stack(norms) -> Tensor:
    device = norms[0].device
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    return torch.stack([n.to(device=device, dtype=dtype) for n in norms])


def _groups(tensors: list[Tensor]) -> dict:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def _scale_(grads: list[Tensor], coef: Tensor) -> None:
    for (device, _), group in _groups(grads).items():
        torch._foreach_mul_(group, coef.to(device))


def _unit_norm(x: Tensor, unit_dim: int) -> Tensor:
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    dims = tuple(d for d in range(x.ndim) if d != unit_dim)
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)


def _as_params(parameters: Params) -> list[Tensor]:
    if isinstance(parameters, nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, Tensor):
        return [parameters]
    return list(parameters)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"Expected {name} > 0, got {value!r}.")
