"""Activation statistics of a Keras model on one training step every K (``fit`` callback).

The Keras counterpart of ``gradhealth.training.sampler.Sampler``: on a sampled step the callback
arms ``KerasTaps(lean=True)`` in ``on_train_batch_begin`` (hooks on each layer, wrappers
on fused activations) and collects in ``on_train_batch_end``, after Keras's
``train_step`` ran forward and backward; every other step runs with no hook and no
wrapper. Collecting removes the hooks, queues the numbers for one copy to the host and
does not wait: the result is a ``gradhealth.training.sampler.Sample`` (the watch's own pending
sample, which builds its ``LayerStats`` with ``KerasPlan.finish`` once the copy has
landed), handed to the watch's journal, which judges a window of samples with the
probe's rules, as for a torch model. Dead units are judged over that window
(``window.AliveWindow``), never from one batch.
"""

from __future__ import annotations

from typing import Any

import torch

from gradhealth.integrations.keras.catalog import entries
from gradhealth.integrations.keras.records import KerasPlan
from gradhealth.integrations.keras.taps import KerasTaps
from gradhealth.measure.fetch import Fetch
from gradhealth.training.sampler import Sample
from gradhealth.training.window import WINDOW_SAMPLES, AliveWindow


class KerasSampler:
    def __init__(self, model: Any, every: int | None, window: int = WINDOW_SAMPLES):
        self.entries = entries(model)
        self.every = every
        self.taps: KerasTaps | None = None
        self.loss: torch.Tensor | None = None
        self.alive = AliveWindow(window)

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    @property
    def armed(self) -> bool:
        return self.taps is not None

    def arm(self) -> None:
        self.disarm()
        self.loss = None
        self.taps = KerasTaps(self.entries, lean=True).__enter__()

    def log_loss(self, loss: torch.Tensor) -> None:
        """The sampled step's loss (a device tensor, for the rules' meta; no sync)."""
        if self.taps is not None:
            self.loss = loss.detach()

    def collect(self) -> Sample | None:
        """Remove the hooks and queue the step's numbers for the host (no wait); None when
        no layer was called while armed (a compiled ``train_step`` runs no Python hook)."""
        taps, self.taps = self.taps, None
        if taps is None:
            return None
        taps.remove()
        try:
            if not taps.calls:
                return None
            fetch = Fetch()
            loss_slot = fetch.add(self.loss)
            self.alive.add(taps.calls)
            dead = {name: fetch.add(t) for name, t in self.alive.dead_fractions().items()}
            plan = KerasPlan(self.entries, taps.calls, {}, fetch, lean=True)
            fetch.start()
        finally:
            taps.release()
            self.loss = None
        return Sample(plan, fetch, dead, loss_slot, taps.batch_size)

    def disarm(self) -> None:
        """Remove hooks and wrappers without collecting (idempotent)."""
        taps, self.taps = self.taps, None
        if taps is not None:
            taps.remove()
            taps.release()
