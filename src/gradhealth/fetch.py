"""Copy many small device tensors to the host in one transfer per device.

Probes and flushes gather their numbers as device tensors and resolve them here, once,
instead of paying one host synchronisation per number. ``start`` begins the copy without
waiting (CUDA: into pinned memory, behind the kernels already queued), so a training
step can hand its numbers over and go on; ``ready`` says when they have landed and
``resolve`` waits for them.
"""

from __future__ import annotations

import torch


class Fetch:
    """Collect tensors with ``add`` (returns a slot), then ``resolve`` all of them at once."""

    def __init__(self) -> None:
        self._items: list[torch.Tensor] = []
        self._copies: list[tuple[torch.Tensor, list[int], torch.cuda.Event | None]] | None = None
        self._values: list[list[float]] | None = None

    def add(self, tensor: torch.Tensor | None) -> int | None:
        if tensor is None:
            return None
        if self._copies is not None:
            raise RuntimeError("Fetch.add after Fetch.start")
        self._items.append(tensor.detach().reshape(-1))
        return len(self._items) - 1

    def start(self) -> None:
        """Begin the copy to the host: one float32 vector per device, no host sync."""
        if self._copies is not None:
            return
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(self._items):
            by_device.setdefault(t.device, []).append(i)
        copies = []
        for indices in by_device.values():
            flat = torch.cat([self._items[i].float() for i in indices])
            event = None
            if flat.device.type == "cuda":
                host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
                host.copy_(flat, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(flat.device))  # the copy's stream
            elif flat.device.type == "cpu":
                host = flat
            else:  # other accelerators: a plain copy (it waits)
                host = flat.cpu()
            copies.append((host, indices, event))
        self._copies = copies

    def ready(self) -> bool:
        """True once the copy has landed (``resolve`` will not wait)."""
        if self._values is not None:
            return True
        self.start()
        return all(event is None or event.query() for _, _, event in self._copies)

    def resolve(self) -> None:
        """Wait for the copy (starting it if need be) and make ``get`` answer."""
        if self._values is not None:
            return
        self.start()
        values: list[list[float]] = [[] for _ in self._items]
        for host, indices, event in self._copies:
            if event is not None and not event.query():
                event.synchronize()  # only when asked to wait: ``ready()`` callers never do
            flat = host.tolist()
            start = 0
            for i in indices:
                n = self._items[i].numel()
                values[i] = flat[start:start + n]
                start += n
        self._values = values
        self._items, self._copies = [], []

    def get(self, slot: int | None) -> list[float] | None:
        if slot is None:
            return None
        if self._values is None:
            raise RuntimeError("Fetch.get before Fetch.resolve")
        return self._values[slot]

    def scalar(self, slot: int | None) -> float | None:
        values = self.get(slot)
        return None if values is None else values[0]
