"""Copy many small device tensors to the host in one transfer per device.

Probes and flushes gather their numbers as device tensors and resolve them here, once,
instead of paying one host synchronisation per number.
"""

from __future__ import annotations

import torch


class Fetch:
    """Collect tensors with ``add`` (returns a slot), then ``resolve`` all of them at once."""

    def __init__(self) -> None:
        self._items: list[torch.Tensor] = []
        self._values: list[list[float]] | None = None

    def add(self, tensor: torch.Tensor | None) -> int | None:
        if tensor is None:
            return None
        self._items.append(tensor.detach().reshape(-1).float())
        return len(self._items) - 1

    def resolve(self) -> None:
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(self._items):
            by_device.setdefault(t.device, []).append(i)
        values: list[list[float]] = [[] for _ in self._items]
        for indices in by_device.values():
            flat = torch.cat([self._items[i] for i in indices]).tolist()
            start = 0
            for i in indices:
                n = self._items[i].numel()
                values[i] = flat[start:start + n]
                start += n
        self._values = values
        self._items = []

    def get(self, slot: int | None) -> list[float] | None:
        if slot is None:
            return None
        if self._values is None:
            raise RuntimeError("Fetch.get before Fetch.resolve")
        return self._values[slot]

    def scalar(self, slot: int | None) -> float | None:
        values = self.get(slot)
        return None if values is None else values[0]
