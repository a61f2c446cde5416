"""Activation statistics on one step every K: ``Taps`` armed for that step only.

The sampler arms ``Taps`` (forward hooks on every module, gradient hooks on their
outputs) when the first training forward of a sampled step starts, and disarms it when
that step's optimizer step begins (its backward is done), so every other step runs with
no module hook but the watch's own root hooks. Collecting the numbers queues one copy to
the host and does not wait for it: the per-module ``LayerStats`` are built (and the
rules run) at a later step, once the copy has landed (``Sample``).

Under ``torch.compile`` hooks added to submodules after compilation are not called
(dynamo does not guard on them), so on a sampled step the compiled model is run eagerly
(``torch.compiler.set_stance("force_eager")`` for that one forward; the backward of an
eager forward is eager too): the sampled step measures the same numbers as without
compile, at eager speed, and every other step runs compiled.

A sampled step also counts the NaN/Inf of its batch (one reduction per floating input,
on the device): lean taps do not scan module inputs, so without it a NaN in the data
would read as made by the first module it reaches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradhealth.measure import adam, batch
from gradhealth.measure.fetch import Fetch
from gradhealth.measure.layer import LayerStats
from gradhealth.measure.records import LayerPlan
from gradhealth.measure.taps import Taps
from gradhealth.training.pacer import Pacer
from gradhealth.training.window import AliveWindow, Span


class Sampler:
    def __init__(self, target: nn.Module, pacer: Pacer, compiled: bool, window: int,
                 optimizer: Any = None):
        self.target = target  # the eager module (``_orig_mod`` of a compiled one)
        self.optimizer = optimizer  # an Adam-family one's moments are read on sampled steps
        self._owners: dict[int, str] | None = None
        self.pacer = pacer  # when a step is sampled
        self.compiled = compiled
        self.pending = False  # the next training forward starts a sampled step
        self.taps: Taps | None = None
        self.batch_size: int | None = None
        self.alive = AliveWindow(window)
        self._stance: Any = None
        # the sampled step's batch: (name, entries) of each floating input, and the
        # device count of each one's NaN/Inf
        self._inputs: list[tuple[str, int]] = []
        self._input_counts: torch.Tensor | None = None
        self._parameters: list[str] | None = None

    def due(self, step: int) -> bool:
        return self.pacer.sample_due(step)

    @property
    def armed(self) -> bool:
        return self.taps is not None

    def arm(self, args: tuple, kwargs: dict) -> None:
        """Called from the root forward pre-hook of the first training forward of the step."""
        self.pending = False
        self.batch_size = _batch_size(args, kwargs)
        if self._parameters is None:  # the forward's argument names, read once
            self._parameters = batch.parameter_names(self.target.forward)
        named = batch.arguments(self._parameters, args, kwargs)
        self._inputs = [(name, t.numel()) for name, t in named]
        self._input_counts = batch.counts(named)
        self.taps = Taps(self.target, lean=True).__enter__()
        if self.compiled:
            self._stance = torch.compiler.set_stance("force_eager")

    def forward_done(self) -> None:
        """Root forward hook: later forwards of this step may run compiled again, and
        attention is observed no more (the first forward of the step is measured)."""
        self._end_stance()
        if self.taps is not None:
            self.taps.forward_done()

    def disarm(self) -> Taps | None:
        """Remove the hooks (idempotent); returns the taps that recorded this step."""
        self._end_stance()
        taps, self.taps = self.taps, None
        if taps is not None:
            taps.remove()
        return taps

    def collect(self, taps: Taps, loss: torch.Tensor | None,
                grad_scale: torch.Tensor | None = None, step: int | None = None) -> Sample:
        """Queue the sampled step's numbers for the host and release the taps; no sync.

        ``loss``: the step's loss cell, copied with them. ``grad_scale``: GradScaler's
        loss scale, by which every gradient the taps saw is multiplied. ``step``: the
        sampled step, which a dead-unit verdict names as its onset.
        """
        try:
            fetch = Fetch()
            scale_slot = fetch.add(grad_scale)
            loss_slot = fetch.add(loss)
            inputs_slot = fetch.add(self._input_counts)
            inputs, self._inputs, self._input_counts = self._inputs, [], None
            self.alive.add(taps.calls, self.batch_size, step)
            span = self.alive.span()
            dead = {name: fetch.add(t) for name, t in self.alive.dead_fractions().items()}
            batch_dead = {name: fetch.add(t)
                          for name, t in self.alive.batch_dead_fractions().items()}
            # no gradients handed over: the watch has every module's weight-gradient norm
            # already, from the step's fused pass
            plan = LayerPlan(self.target, taps.calls, {}, fetch, lean=True,
                             grad_scale=scale_slot, signals=[*taps.signals, *self._adam()])
            fetch.start()
        finally:
            taps.release()
        return Sample(plan, fetch, dead, loss_slot, self.batch_size, span, batch_dead,
                      (inputs, inputs_slot))

    def _adam(self) -> list[adam.AdamMoments]:
        """The optimizer's moments, when it is one of the Adam family (measure/adam.py)."""
        if self.optimizer is None:
            return []
        if self._owners is None:
            self._owners = adam.owners(self.target)
        return [adam.AdamMoments(self.optimizer, self._owners)]

    def _end_stance(self) -> None:
        if self._stance is not None:
            stance, self._stance = self._stance, None
            stance.__exit__(None, None, None)  # back to the stance before ours


class Sample:
    """A sampled step's numbers on their way to the host (``Sampler.collect``).

    ``ready`` says whether the copy has landed; ``result`` (which waits if not) builds the
    per-module ``LayerStats``, the fraction of units dead over the span of samples per
    rectifier (it replaces each sample's own: one batch shows batch-constant zeros that
    the span does not), and the sample's meta (batch size, loss, the span, and each
    rectifier's dead fraction on this batch alone as ``batch_dead``).
    """

    def __init__(self, plan: LayerPlan, fetch: Fetch, dead: dict[str, int | None],
                 loss_slot: int | None, batch_size: int | None, span: Span | None = None,
                 batch_dead: dict[str, int | None] | None = None,
                 inputs: tuple[list[tuple[str, int]], int | None] = ([], None)):
        self.plan, self.fetch, self.dead = plan, fetch, dead
        self.loss_slot, self.batch_size = loss_slot, batch_size
        self.span, self.batch_dead = span, batch_dead or {}
        self.inputs = inputs  # the batch's floating inputs (name, entries), their slot

    def ready(self) -> bool:
        return self.fetch.ready()

    def result(self) -> tuple[dict[str, LayerStats], dict[str, float], dict[str, Any]]:
        self.fetch.resolve()
        layers = self.plan.finish()
        dead = {name: v for name, slot in self.dead.items()
                if (v := self.fetch.scalar(slot)) is not None}
        batch_dead = {name: v for name, slot in self.batch_dead.items()
                      if (v := self.fetch.scalar(slot)) is not None}
        for name, fraction in dead.items():
            if name in layers:
                layers[name] = layers[name].replaced(dead_fraction=fraction)
        meta: dict[str, Any] = {"batch_size": self.batch_size,
                                "loss": self.fetch.scalar(self.loss_slot),
                                "batch_dead": batch_dead,
                                **(self.span.meta() if self.span else {})}
        named, slot = self.inputs
        counts = self.fetch.get(slot) or []
        bad = [{"argument": name, "numel": numel, "count": int(c)}
               for (name, numel), c in zip(named, counts) if c]
        if bad:
            meta["nonfinite_inputs"] = bad
        return layers, dead, meta


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None
