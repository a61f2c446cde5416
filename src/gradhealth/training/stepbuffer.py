"""A preallocated device buffer holding one flush window of per-step numbers.

Row ``r`` holds step ``r`` of the window: three blocks of one float per parameter
(gradient norm every step; update norm and weight norm on sampled steps) followed by
named scalar columns (loss, clip pre-norm, ...). Writes are device-to-device copies;
``drain`` is the one host copy per window (asynchronous on CUDA). NaN means "not
recorded".

A block may also be handed over as host floats (``defer``, a CPU's norms): they are
written into their rows once per window, at ``drain``. On a CPU a step's ``torch.stack``
of a few dozen 0-d tensors costs as much as a tenth of a millisecond step's monitoring;
once per window one ``torch.tensor`` takes all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

BLOCKS = ("grad", "update", "weight")


class StepBuffer:
    def __init__(self, rows: int, n_params: int, scalars: tuple[str, ...],
                 device: torch.device, dtype: torch.dtype = torch.float32):
        self.rows, self.n_params = rows, n_params
        self.scalars = {name: len(BLOCKS) * n_params + i for i, name in enumerate(scalars)}
        width = len(BLOCKS) * n_params + len(scalars)
        self.data = torch.full((rows, width), math.nan, device=device, dtype=dtype)
        # views made once: indexing a tensor costs more than the copy into it
        self._blocks = {name: [self.data[r, i * n_params:(i + 1) * n_params] for r in range(rows)]
                        for i, name in enumerate(BLOCKS)}
        self._cells = {name: [self.data[r, col] for r in range(rows)]
                       for name, col in self.scalars.items()}
        self._index: dict[tuple[int, ...], torch.Tensor] = {}  # put_many's row indices
        self._deferred: dict[str, list[tuple[int, Sequence[float]]]] = {}  # ``defer``

    def block(self, row: int, name: str) -> torch.Tensor:
        """The contiguous view of one per-parameter block of ``row`` (write into it)."""
        return self._blocks[name][row]

    def defer(self, row: int, name: str, values: Sequence[float]) -> None:
        """Hold one per-parameter block of ``row`` as ``n_params`` host floats; they are
        written into the buffer at the next ``drain`` (read the row only after it)."""
        self._deferred.setdefault(name, []).append((row, values))

    def _settle(self) -> None:
        """Write the deferred blocks into their rows: one tensor and one copy per block.
        The rows held are consecutive: every step defers its own row, in order from the
        window's first, until the fused call stops applying (for good: it does not
        resume before a new layout, which comes with a new buffer)."""
        p = self.n_params
        for name, held in self._deferred.items():
            i, first = BLOCKS.index(name), held[0][0]
            rows = torch.tensor([values for _, values in held], dtype=self.data.dtype)
            self.data[first:first + len(held), i * p:(i + 1) * p].copy_(rows)
        self._deferred.clear()

    def cell(self, row: int, name: str) -> torch.Tensor:
        """The 0-d view of one scalar column of ``row``."""
        return self._cells[name][row]

    def put(self, row: int, name: str, value: torch.Tensor) -> None:
        """Copy a 0-d (or one-element) tensor into a scalar column, on device."""
        value = value.detach()
        self._cells[name][row].copy_(value if value.dim() == 0 else value.reshape(()))

    def put_many(self, name: str, values: list[tuple[int, torch.Tensor]]) -> None:
        """Copy many rows' 0-d (or one-element) tensors into a scalar column: one stack and
        one indexed copy on device when they share a device and dtype."""
        rows = [r for r, _ in values]
        flat = [v if v.dim() == 0 else v.reshape(()) for _, v in values]
        try:
            stacked = torch.stack(flat)
        except RuntimeError:  # several devices or dtypes: one copy each
            for row, value in zip(rows, flat):
                self.put(row, name, value)
            return
        column = self.data[:, self.scalars[name]]
        if rows == list(range(rows[0], rows[0] + len(rows))):  # every step logged one
            column[rows[0]:rows[0] + len(rows)].copy_(stacked)
            return
        key = tuple(rows)
        index = self._index.get(key)
        if index is None:  # made once per pattern: a host-to-device copy may synchronise
            index = self._index[key] = torch.tensor(rows, dtype=torch.long).to(column.device)
        column.index_copy_(0, index, stacked.to(column.dtype))

    def drain(self, n: int) -> Drained:
        """Start copying the first ``n`` rows to the host, then clear the buffer.

        On CUDA the copy goes to pinned memory without blocking (stream order keeps it
        ahead of the next window's writes and of the clearing); the returned ``Drained``
        says when it has landed, so the host work waits until the GPU is there anyway.
        """
        self._settle()
        src = self.data[:n]
        event = None
        if src.is_cuda:
            host = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
            host.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(src.device))  # the copy's stream
        else:
            host = src.clone()
        self.data.fill_(math.nan)
        return Drained(host, event, self.n_params, self.scalars)


class Drained:
    """One window's numbers on their way to (or arrived on) the host."""

    def __init__(self, host: torch.Tensor, event, n_params: int, scalars: dict[str, int]):
        self._host, self._event = host, event
        self._n_params, self._scalars = n_params, scalars

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def arrays(self) -> dict[str, np.ndarray]:
        """The window as float64 arrays (waits for the copy if it has not landed yet)."""
        if self._event is not None and not self._event.query():
            self._event.synchronize()  # only when asked to wait: ``ready()`` callers never do
        host = self._host.to(torch.float64).numpy()
        p = self._n_params
        out = {name: host[:, i * p:(i + 1) * p] for i, name in enumerate(BLOCKS)}
        out.update({name: host[:, col] for name, col in self._scalars.items()})
        return out
