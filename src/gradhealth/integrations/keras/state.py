"""Capture and restore what a Keras forward pass may change, so a probe leaves no trace.

A training-mode call writes Keras *variables*, not torch buffers: BatchNormalization's
moving statistics and each dropout layer's ``SeedGenerator`` state (non-trainable torch
Parameters on this backend), and unseeded random ops advance Keras's global seed
generator; layers keep the losses of their last call and a ``_called`` flag. ``KerasState``
copies all of that, ``Snapshot`` the torch side (modes, buffers, torch's RNG); ``restore``
writes the values back into the same tensors (``copy_`` under ``no_grad``, as Keras's
``assign``), only those the pass wrote (their autograd version counter moved), and sets
their version counters back: a graph built before the probe stays usable. Trainable
values, never written by a probe, are covered all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gradhealth.measure.snapshot import Snapshot
from gradhealth.measure.writes import set_version


@dataclass
class KerasState:
    torch_side: Snapshot
    # (a variable's value, its copy, its version counter)
    values: list[tuple[torch.Tensor, torch.Tensor, int]]
    layers: list[tuple[Any, list | None, Any]]  # (layer, its _losses, its _called)

    @classmethod
    def capture(cls, model: Any, layers: list[Any]) -> KerasState:
        variables = list(model.variables)
        seed = _global_seed_generator()
        if seed is not None:
            variables.append(seed.state)
        seen: set[int] = set()
        values = []
        for v in variables:
            value = v.value
            if id(value) not in seen:
                seen.add(id(value))
                values.append((value, value.detach().clone(), value._version))
        kept = [(layer, _losses_of(layer), vars(layer).get("_called")) for layer in layers]
        return cls(Snapshot.capture(model), values, kept)

    def restore(self) -> None:
        with torch.no_grad():
            for value, saved, version in self.values:
                if value._version != version:
                    value.copy_(saved)
                    set_version(value, version)
        for layer, losses, called in self.layers:
            current = vars(layer).get("_losses")
            if losses is not None and isinstance(current, list):
                current[:] = losses
            if called is not None:
                object.__setattr__(layer, "_called", called)
        self.torch_side.restore()


def _losses_of(layer: Any) -> list | None:
    losses = vars(layer).get("_losses")
    return list(losses) if isinstance(losses, list) else None


def _global_seed_generator() -> Any:
    """Keras's global ``SeedGenerator`` if one was created (unseeded random ops use it)."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # a Keras without this module: torch's RNG is still restored
        return None
    return global_state.get_global_attribute("global_seed_generator")
