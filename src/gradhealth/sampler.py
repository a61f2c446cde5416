"""Activation statistics on one step every K: ``Taps`` armed for that step only.

The sampler arms ``Taps`` (forward hooks on every module, gradient hooks on their
outputs) when the first training forward of a sampled step starts, and disarms it when
that step's optimizer step begins (its backward is done), so every other step runs with
no module hook but the watch's own root hooks. Collecting the numbers is the one host
copy of the sampled step.

Under ``torch.compile`` hooks added to submodules after compilation are not called
(dynamo does not guard on them), so on a sampled step the compiled model is run eagerly
(``torch.compiler.set_stance("force_eager")`` for that one forward; the backward of an
eager forward is eager too): the sampled step measures the same numbers as without
compile, at eager speed, and every other step runs compiled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradhealth import stats
from gradhealth.fetch import Fetch
from gradhealth.findings import LayerStats
from gradhealth.records import build_layers
from gradhealth.taps import Call, Taps
from gradhealth.window import AliveWindow


class Sampler:
    def __init__(self, target: nn.Module, every: int | None, compiled: bool, window: int):
        self.target = target  # the eager module (``_orig_mod`` of a compiled one)
        self.every = every
        self.compiled = compiled
        self.pending = False  # the next training forward starts a sampled step
        self.taps: Taps | None = None
        self.batch_size: int | None = None
        self.alive = AliveWindow(window)
        self._stance: Any = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    @property
    def armed(self) -> bool:
        return self.taps is not None

    def arm(self, args: tuple, kwargs: dict) -> None:
        """Called from the root forward pre-hook of the first training forward of the step."""
        self.pending = False
        self.batch_size = _batch_size(args, kwargs)
        self.taps = Taps(self.target, lean=True).__enter__()
        if self.compiled:
            self._stance = torch.compiler.set_stance("force_eager")

    def forward_done(self) -> None:
        """Root forward hook: later forwards of this step may run compiled again."""
        self._end_stance()

    def disarm(self) -> Taps | None:
        """Remove the hooks (idempotent); returns the taps that recorded this step."""
        self._end_stance()
        taps, self.taps = self.taps, None
        if taps is not None:
            taps.remove()
        return taps

    def collect(self, taps: Taps, extra: Fetch, grad_scale: torch.Tensor | None = None,
                ) -> tuple[dict[str, LayerStats], dict[str, float]]:
        """Per-module statistics of the sampled step (one host copy, with ``extra``'s tensors).

        ``grad_scale``: GradScaler's loss scale, by which every gradient the taps saw is
        multiplied. Returns the step's ``LayerStats`` and, per rectifier, the fraction of
        units dead over the window of samples.
        """
        if grad_scale is not None:
            _unscale(taps.calls, grad_scale)
        self.alive.add(taps.calls)
        dead_slots = {name: extra.add(t) for name, t in self.alive.dead_fractions().items()}
        try:
            # no gradients handed over: the watch has every module's weight-gradient norm
            # already, from the step's fused pass
            layers = build_layers(self.target, taps.calls, {}, extra)  # resolves ``extra``
        finally:
            taps.release()
        dead = {name: extra.scalar(slot) for name, slot in dead_slots.items()}
        return layers, {k: v for k, v in dead.items() if v is not None}

    def _end_stance(self) -> None:
        if self._stance is not None:
            stance, self._stance = self._stance, None
            stance.__exit__(None, None, None)  # back to the stance before ours


def _unscale(calls: list[Call], scale: torch.Tensor) -> None:
    """Divide the loss scale out of the gradient moments (cheap: 0-d tensors).

    On a step GradScaler let through every gradient is finite, so a non-finite sum or sum
    of squares can only be our own float32 overflow under a huge scale (2**24 and up during
    calibration): it becomes unknown (NaN, flag 0) rather than a false NaN finding.
    """
    inv = scale.reshape(()).float().reciprocal()
    nan = torch.full_like(inv, math.nan)
    for call in calls:
        g = call.grad
        if g is not None:
            total = torch.where(torch.isfinite(g[stats.SUM]), g[stats.SUM] * inv, nan)
            sumsq = torch.where(torch.isfinite(g[stats.SUMSQ]), g[stats.SUMSQ] * inv * inv, nan)
            call.grad = torch.stack((g[stats.N], total, sumsq, torch.zeros_like(inv)))
        if call.input_grad_time is not None:
            call.input_grad_time = call.input_grad_time * inv.to(call.input_grad_time.device)


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None
