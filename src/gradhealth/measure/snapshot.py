"""Capture and restore everything a forward/backward pass may change.

A probe must leave the model bit-identical (docs/architecture.md#the-probes-promise):
train/eval flags of every module, buffers such as BatchNorm running statistics (values,
the tensor objects themselves and their autograd version counters), the parameters'
values, and the global RNG state that dropout draws from.

Buffers are never written: ``capture`` swaps each one for a working copy, which the pass
updates (BatchNorm's running statistics in training mode), and ``restore`` swaps the
original back. Copying the saved values *into* the original instead would bump its
version counter, and a graph the caller built before the probe (in eval mode, BatchNorm
saves its running statistics for backward) could no longer be back-propagated.

Parameters are not copied up front (that would double the model's memory): a forward
that writes its own weights is caught as it writes (``measure.writes.Writes``, entered
around the forward with ``Snapshot.watching``), and only those are put back.
``.grad`` is never written by a probe (it uses ``torch.autograd.grad``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradhealth.measure.writes import Writes


@dataclass
class Snapshot:
    model: nn.Module
    modes: list[tuple[nn.Module, bool]]
    buffers: list[tuple[nn.Module, str, torch.Tensor]]  # the originals, swapped out
    cpu_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    writes: Writes | None = None

    @classmethod
    def capture(cls, model: nn.Module) -> Snapshot:
        """Modes, RNG, and every buffer swapped for a working copy until ``restore``."""
        cuda_rng = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda_rng = torch.cuda.get_rng_state_all()
        snapshot = cls(model, [(m, m.training) for m in model.modules()], [],
                       torch.get_rng_state(), cuda_rng)
        snapshot._swap_buffers()
        return snapshot

    def _swap_buffers(self) -> None:
        copies: dict[int, torch.Tensor] = {}  # a buffer shared by modules: one copy
        for module in self.model.modules():
            for key, buf in module._buffers.items():
                if buf is None:
                    continue
                work = copies.get(id(buf))
                if work is None:
                    work = copies[id(buf)] = buf.detach().clone().requires_grad_(
                        buf.requires_grad)
                self.buffers.append((module, key, buf))
                module._buffers[key] = work

    @contextlib.contextmanager
    def watching(self, observer: Any = None) -> Iterator[None]:
        """Catch the parameters the forward run inside writes (restored by ``restore``).
        ``observer``: called after each torch call whose name is in ``observer.names``
        (``measure.functional.Functions``), in the same mode."""
        if self.writes is None:
            self.writes = Writes(self.model)
        self.writes.observer = observer
        try:
            with self.writes:
                yield
        finally:
            self.writes.observer = None

    def rewind(self) -> None:
        """Back to the captured state, ready for another pass of the same batch: weights
        and buffers as before, fresh working copies, the RNG state of the first pass."""
        self.restore()
        self.buffers = []
        self._swap_buffers()

    def restore(self) -> None:
        if self.writes is not None:
            self.writes.restore()
        for module, training in self.modes:
            module.training = training
        for module, key, original in self.buffers:
            module._buffers[key] = original
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
