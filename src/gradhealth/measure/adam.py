"""The gradient RMS that Adam sees, per module, beside its epsilon.

Adam (and AdamW, NAdam, RAdam) divides each update by sqrt(v_hat) + eps, where v_hat is
the bias-corrected running mean of the squared gradient (``exp_avg_sq`` in the
optimizer's state; ``max_exp_avg_sq`` with amsgrad). When a layer's gradient RMS falls to
the order of eps, the denominator is eps rather than the gradient's scale and the update
shrinks toward zero (Wortsman et al. 2023, Sec. 3.4; docs/science.md#transformer-era-instabilities).

Per module (the first module that owns each parameter, as ``ParamLayout``), the RMS is
sqrt(sum of v_hat over its entries / entries): one ``torch._foreach_norm(v, 1)`` over the
state (v >= 0, so its L1 norm is its sum) per device and dtype, read with the sampled
step's other numbers. Bias correction 1 - beta2^step uses each parameter's own step.
Parameters whose v is still all zero (no gradient yet: unused, or before the first step)
are left out: Adam does not update them, whatever eps is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradhealth.measure.fetch import Fetch


def owners(model: nn.Module) -> dict[int, str]:
    """Parameter id -> qualified name of the first module that owns it."""
    found: dict[int, str] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            found.setdefault(id(p), name)
    return found


def second_moment(state: Any, group: dict) -> tuple[torch.Tensor, Any, float, float] | None:
    """(v, step, beta2, eps) of one parameter's Adam-family ``state`` in its param
    ``group``, or None (another optimizer, or no step yet)."""
    if not state or "eps" not in group or "betas" not in group:
        return None
    v = state.get("max_exp_avg_sq") if group.get("amsgrad") else None
    v = state.get("exp_avg_sq") if v is None else v
    if not isinstance(v, torch.Tensor) or v.is_sparse:
        return None
    return v, state.get("step"), float(group["betas"][1]), float(group["eps"])


class AdamMoments:
    """One sampled step's per-module gradient RMS as ``optimizer`` sees it, and its eps."""

    def __init__(self, optimizer: Any, owner_of: dict[int, str]):
        self.optimizer, self.owner_of = optimizer, owner_of
        # (module, entries, beta2, eps, step or its slot, sum slot index)
        self._rows: list[tuple[str, int, float, float, float | None, int | None]] = []
        self._slots: list[int | None] = []

    def queue(self, fetch: Fetch, calls: Sequence[Any]) -> set[str]:
        groups: dict[tuple, list[tuple[str, torch.Tensor, Any, float, float]]] = {}
        states = getattr(self.optimizer, "state", {})
        for group in getattr(self.optimizer, "param_groups", ()):
            for p in group["params"]:
                found = second_moment(states.get(p), group)
                name = self.owner_of.get(id(p))
                if found is None or name is None:
                    continue
                v, step, beta2, eps = found
                groups.setdefault((v.device, v.dtype), []).append((name, v, step, beta2, eps))
        for members in groups.values():
            sums = torch._foreach_norm([m[1] for m in members], 1)
            self._slots.append(fetch.add(list(sums)))
            for name, v, step, beta2, eps in members:
                self._rows.append((name, v.numel(), beta2, eps, *_step(fetch, step)))
        return {row[0] for row in self._rows}

    def fields(self, fetch: Fetch) -> dict[str, dict[str, Any]]:
        sums = [x for slot in self._slots for x in (fetch.get(slot) or [])]
        total: dict[str, list[float]] = {}  # name -> [sum of v_hat, entries, eps]
        for (name, n, beta2, eps, step, slot), s in zip(self._rows, sums):
            if slot is not None:
                step = fetch.scalar(slot)
            if not s or not step or not math.isfinite(s):
                continue  # no gradient yet: not updated whatever eps is
            correction = 1.0 - beta2 ** step
            t = total.setdefault(name, [0.0, 0.0, eps])
            t[0] += s / correction if correction > 0 else s
            t[1] += n
            t[2] = min(t[2], eps)
        return {name: {"adam_grad_rms": math.sqrt(v / n), "adam_eps": eps}
                for name, (v, n, eps) in total.items() if n}


def _step(fetch: Fetch, step: Any) -> tuple[float | None, int | None]:
    """A step count read now when it is a number or a CPU tensor (no device sync), else
    queued with the other numbers."""
    if isinstance(step, torch.Tensor):
        if step.device.type == "cpu":
            return float(step), None
        return None, fetch.add(step.reshape(()))
    return (float(step), None) if step is not None else (None, None)
