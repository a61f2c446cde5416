"""The clippers' shared shell: ``ClipResult``, the ``_Clipper`` base class, AMP unscaling
(``unscale_grads_``) and the norm helpers every clipper uses (``total_norm``)."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError, describe
from gradhealth.measure.shards import Shards

Params = nn.Module | Tensor | Iterable[Tensor]
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

    def __repr__(self) -> str:
        """The clipper as constructed, e.g. ``ClipNorm(max_norm=1.0, norm_type=2.0)`` (what
        a run store's metadata records)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names if hasattr(self, n))
        return f"{type(self).__name__}({args})"

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
                grads = _local_shards(grads)  # clip each rank's shard, norms reduced
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


def _local_shards(grads: list[Tensor]) -> list[Tensor]:
    """Each gradient's local shard (``Shards.local``)."""
    return Shards.local(grads)


def total_norm(grads: list[Tensor], norm_type: float = 2.0, shards: Shards | None = None,
               ) -> Tensor:
    """Norm of all tensors together, 0-d on the first tensor's device; half-precision
    tensors are reduced in float32 (float16 norms overflow at 65504). Equals
    ``torch.nn.utils.get_total_norm`` for float32 gradients. ``shards``: ``grads`` are
    the local shards of DTensors (``Shards.of(...).local(...)``): the norm of the full
    tensors, the same on every rank."""
    if shards is not None:
        return torch.linalg.vector_norm(shards.norms(grads, norm_type), norm_type)
    norms: list[Tensor] = []
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


def _as_params(parameters: Params) -> list[Tensor]:
    if isinstance(parameters, nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, Tensor):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError:
        params = None
    if params is None or not all(isinstance(p, Tensor) for p in params):
        raise ConfigError(f"Expected the model (an nn.Module), a parameter or an iterable of "
                          f"parameters, got {describe(parameters)}. Call the clipper with the "
                          f"model after backward: clip(model).")
    return params


def _number(value: object) -> TypeGuard[float]:
    """A real number (a Python or numpy int or float), not a bool, a string or a tensor."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _positive(name: str, value: object, *, infinite: bool = False) -> None:
    """ConfigError unless ``value`` is a number > 0 (finite unless ``infinite``): a
    threshold of 0, below 0, NaN or inf would silently clip everything or nothing."""
    if not _number(value) or not value > 0 or (not infinite and not math.isfinite(value)):
        bound = "> 0" if infinite else "> 0 and finite"
        raise ConfigError(f"Expected {name} to be a number {bound}, got {value!r}; pass a "
                          f"positive number such as {name}=1.0.")


def _between(name: str, value: object, low: float, high: float, *, low_open: bool = True,
             high_open: bool = False) -> None:
    """ConfigError unless ``low < value <= high`` (the ends open or closed as told)."""
    ok = _number(value) and math.isfinite(value) and (
        (value > low if low_open else value >= low) and (value < high if high_open
                                                         else value <= high))
    if not ok:
        span = (f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise ConfigError(f"Expected {name} to be a number in {span}, got {value!r}.")


def _whole(name: str, value: object, minimum: int = 1) -> None:
    """ConfigError unless ``value`` is an int >= ``minimum`` (no bool, no 1.5)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"Expected {name} to be an int >= {minimum}, got {value!r}.")
