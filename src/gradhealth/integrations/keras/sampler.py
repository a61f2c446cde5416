"""Activation statistics of a Keras model on one training step every K (``fit`` callback).

The watch's ``Sampler`` with ``KerasTaps``: armed in ``on_train_batch_begin``, taken in
``on_train_batch_end`` once ``train_step`` ran forward and backward (every other step
runs with no hook or wrapper), collected as the watch's own (one copy to the host, no
wait; a ``LayerPlan`` over the entries' units) and judged by the journal over a window.
"""

from __future__ import annotations

from typing import Any

import torch

from gradhealth.integrations.keras.catalog import entries
from gradhealth.integrations.keras.taps import KerasTaps
from gradhealth.training.pacer import Pacer
from gradhealth.training.sampler import Sample, Sampler
from gradhealth.training.window import WINDOW_SAMPLES


class KerasSampler(Sampler):
    def __init__(self, model: Any, pacer: Pacer, window: int = WINDOW_SAMPLES):
        """``pacer``: the watch's schedule of sampled steps (``Watch.pacer``)."""
        self.entries = entries(model)
        units = [e.unit for e in self.entries]  # LayerPlan reads them in place of a module
        super().__init__(units, pacer, False, window)  # type: ignore[arg-type]
        self.loss: torch.Tensor | None = None

    def arm(self, args: tuple = (), kwargs: dict | None = None) -> None:
        self.disarm()
        self.loss = None
        self.taps = KerasTaps(self.entries, lean=True).__enter__()

    def log_loss(self, loss: torch.Tensor) -> None:
        """The sampled step's loss (a device tensor, for the rules' meta; no sync)."""
        if self.taps is not None:
            self.loss = loss.detach()

    def take(self) -> Sample | None:
        """Remove the hooks and queue the step's numbers for the host (no wait); None when
        no layer was called while armed (a compiled ``train_step`` runs no Python hook)."""
        taps, loss, self.loss = self.disarm(), self.loss, None
        if not isinstance(taps, KerasTaps) or not taps.calls:
            return None
        self.batch_size = taps.batch_size
        return self.collect(taps, loss)
