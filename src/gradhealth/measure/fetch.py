"""Copy many small device tensors to the host in one transfer per device.

Probes and flushes gather their numbers as device tensors and resolve them here, once,
instead of paying one host synchronisation per number. ``start`` begins the copy without
waiting (CUDA: into pinned memory, behind the kernels already queued), so a training
step can hand its numbers over and go on; ``ready`` says when they have landed and
``resolve`` waits for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Fetch:
    """Collect tensors with ``add`` (returns a slot), then ``resolve`` all of them at once."""

    def __init__(self) -> None:
        self._items: list[torch.Tensor] = []  # the pieces, in order of ``add``
        self._slots: list[tuple[int, int]] = []  # slot -> (first piece, number of pieces)
        self._copies: list[tuple[torch.Tensor, list[int], torch.cuda.Event | None]] | None = None
        self._values: list[list[float]] | None = None

    def add(self, tensor: torch.Tensor | Sequence[torch.Tensor] | None) -> int | None:
        """Queue a tensor, or several read back as one (``get`` answers their values in
        order: no kernel joins them on the device). Returns its slot; None for None."""
        if tensor is None:
            return None
        if self._copies is not None:
            raise RuntimeError("Fetch.add after Fetch.start")
        pieces = (tensor,) if isinstance(tensor, torch.Tensor) else tensor
        self._slots.append((len(self._items), len(pieces)))
        for t in pieces:  # 0-d pieces are stacked in ``start``, the rest flattened there
            self._items.append(t.detach() if t.requires_grad else t)
        return len(self._slots) - 1

    def start(self) -> None:
        """Begin the copy to the host: one float32 vector per device, no host sync."""
        if self._copies is not None:
            return
        by_device: dict[torch.device, tuple[list[int], list[int]]] = {}
        for i, t in enumerate(self._items):
            scalars, vectors = by_device.setdefault(t.device, ([], []))
            (scalars if t.dim() == 0 else vectors).append(i)
        copies = []
        for scalars, vectors in by_device.values():
            # the scalars in one stack (one view each would cost as much as a kernel)
            parts = [torch.stack([self._items[i] for i in scalars])] if scalars else []
            parts += [self._items[i].reshape(-1) for i in vectors]
            flat = torch.cat([t if t.dtype == torch.float32 else t.float() for t in parts])
            indices = scalars + vectors
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
        return all(event is None or event.query() for _, _, event in self._started())

    def _started(self) -> list[tuple[torch.Tensor, list[int], torch.cuda.Event | None]]:
        self.start()
        assert self._copies is not None  # start() set it (an internal invariant)
        return self._copies

    def resolve(self) -> None:
        """Wait for the copy (starting it if need be) and make ``get`` answer."""
        if self._values is not None:
            return
        pieces: list[list[float]] = [[] for _ in self._items]
        for host, indices, event in self._started():
            if event is not None and not event.query():
                event.synchronize()  # only when asked to wait: ``ready()`` callers never do
            flat = host.tolist()
            start = 0
            for i in indices:
                n = self._items[i].numel()
                pieces[i] = flat[start:start + n]
                start += n
        self._values = [pieces[first] if n == 1 else
                        [v for piece in pieces[first:first + n] for v in piece]
                        for first, n in self._slots]
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
