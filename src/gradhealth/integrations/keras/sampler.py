"""Activation statistics of a Keras model on one training step every K (``fit`` callback).

``gradhealth.training.sampler.Sampler`` with ``KerasTaps``: on a sampled step the callback
arms the taps in ``on_train_batch_begin`` (hooks on each layer, wrappers on fused
activations) and takes the sample in ``on_train_batch_end``, after Keras's
``train_step`` ran forward and backward; every other step runs with no hook and no
wrapper. Collecting is the watch's own: the hooks are removed, the numbers queued for one
copy to the host without waiting (a ``Sample``, whose ``LayerPlan`` reads the entries'
units), and the journal judges a window of samples with the probe's rules, as for a
torch model. Dead units are judged over that window (``window.AliveWindow``), never from
one batch.
"""

from __future__ import annotations

from typing import Any

import torch

from gradhealth.integrations.keras.catalog import entries
from gradhealth.integrations.keras.taps import KerasTaps
from gradhealth.training.sampler import Sample, Sampler
from gradhealth.training.window import WINDOW_SAMPLES


class KerasSampler(Sampler):
    def __init__(self, model: Any, every: int | None, window: int = WINDOW_SAMPLES):
        self.entries = entries(model)
        units = [e.unit for e in self.entries]  # LayerPlan reads them in place of a module
        super().__init__(units, every, False, window)  # type: ignore[arg-type]
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
