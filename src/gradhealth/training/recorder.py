"""The device side of a watched run: one buffer row per step, copied out once per window.

``Recorder`` numbers the steps, writes each step's per-parameter gradient norms and
scalars (loss, loss scale, learning rate when it is a tensor, the clipper's pre-clip
norm) into its ``StepBuffer`` row, keeps the host-side ``StepNote`` of the step, measures
the update of sampled steps, and hands full windows to the journal once their copy has
reached the host. Nothing here synchronises with the device except ``process(wait=True)``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

from gradhealth.measure.params import ParamLayout
from gradhealth.training.journal import Journal, StepNote
from gradhealth.training.pacer import Pacer
from gradhealth.training.stepbuffer import Drained, StepBuffer

SCALARS = ("loss", "clip_pre_norm", "clipped", "amp_scale", "lr")


def _merged(windows: list[tuple[Drained, int, ParamLayout]]
            ) -> list[tuple[int, dict[str, np.ndarray], ParamLayout]]:
    """Consecutive copied-out windows recorded under one layout, joined into one."""
    out: list[tuple[int, dict[str, np.ndarray], ParamLayout]] = []
    for drained, rows, layout in windows:
        arrays = {k: v[:rows] for k, v in drained.arrays().items()}
        if out and out[-1][2] is layout:
            n, joined, _ = out[-1]
            out[-1] = (n + rows, {k: np.concatenate([joined[k], arrays[k]]) for k in joined},
                       layout)
        else:
            out.append((rows, arrays, layout))
    return out


DEFER_PARAMS = 256
"""Up to this many parameter tensors a CPU watch reads each step's gradient norms as host
floats and writes them into the buffer once per window (``StepBuffer.defer``): on a CPU a
read waits for nothing, ten ``float()`` calls cost less than a ``torch.stack`` of ten 0-d
tensors, and a window holds 50 x 256 floats, not as many tensors. Past it, or on a GPU
(where the stack is one asynchronous kernel and a read would wait for the device), each
step's norms are stacked into the buffer at once."""


def cpu_floats(tensors: Sequence[torch.Tensor]) -> list[float]:
    """The values of CPU scalars (a read of host memory: nothing to wait for)."""
    return list(map(float, tensors))


def _on_host(layout: ParamLayout) -> bool:
    return layout.device.type == "cpu" and len(layout) <= DEFER_PARAMS


class Recorder:
    def __init__(self, layout: ParamLayout, journal: Journal, pacer: Pacer):
        self.layout, self.journal, self.pacer = layout, journal, pacer
        self.flush_every = flush_every = pacer.flush_every
        self.buffer = StepBuffer(flush_every, len(layout), SCALARS, layout.device,
                                 layout.buffer_dtype)
        self.step = self.row = 0
        self._note: StepNote | None = None
        self.loss_logged = False
        self._loss: torch.Tensor | None = None  # this step's, until ``end``
        self._losses: list[tuple[int, torch.Tensor]] = []  # (row, loss) of the window
        self._before: list[torch.Tensor] | None = None  # weights before a sampled step
        self._before_row = -1
        self._before_note: StepNote | None = None
        self._drained: deque[tuple[Drained, int, ParamLayout]] = deque()
        self._host = _on_host(layout)

    @property
    def note(self) -> StepNote:
        """The open step's host-side note (``begin`` opens it)."""
        assert self._note is not None, "no step is open"  # the watch begins before all else
        return self._note

    def log_loss(self, loss: torch.Tensor) -> None:
        """This step's loss: kept (detached) and written into the buffer with the whole
        window's at once (one device op per window, not one copy per step)."""
        self._loss = loss.detach()
        self.loss_logged = True

    def loss_cell(self) -> torch.Tensor | None:
        return self._loss if self.loss_logged else None

    def begin(self, lr: float | torch.Tensor | None, scale: torch.Tensor | None,
              skipped: str | None = None, row: bool = False
              ) -> torch.Tensor | list[float] | None:
        """Open the step's note and record its gradient norms. ``row``: the caller reads
        them now (the guard), so they are returned: as host floats where the window holds
        them so (``DEFER_PARAMS``, a CPU), else as the buffer's row; without ``row`` None."""
        self._note = StepNote(self.step, 0.0,  # wall time set by ``end``
                              lr if isinstance(lr, float) else None, skipped,
                              self.loss_logged, False, False)
        self.journal.note(self._note)
        held = self.layout.grad_norms() if self._host else None
        norms: torch.Tensor | list[float] | None = None
        if held is None:
            norms = self.buffer.block(self.row, "grad")
            self.layout.grad_norms_into(norms)
        else:
            norms = cpu_floats(held)
            self.buffer.defer(self.row, "grad", norms)
        if isinstance(lr, torch.Tensor):
            self.buffer.put(self.row, "lr", lr)
        if scale is not None:
            self.buffer.put(self.row, "amp_scale", scale)
        return norms if row else None

    def clipped(self, result) -> None:
        """A clipper's result (``pre_norm`` and ``clipped`` device tensors) for this step."""
        self.buffer.put(self.row, "clip_pre_norm", result.pre_norm)
        self.buffer.put(self.row, "clipped", result.clipped.float())
        self.note.clipped = True

    def watch_update(self) -> None:
        """Copy the weights now, to measure the update this step is about to make."""
        self._before = self.layout.copy_weights()
        self._before_row, self._before_note = self.row, self.note

    @property
    def settled(self) -> bool:
        """No sampled step's update is waiting to be measured."""
        return self._before is None

    def settle_update(self) -> None:
        """Measure the update of the last sampled step (call once the update is applied)."""
        if self._before is None:
            return
        before, self._before = self._before, None
        self.layout.update_norms_into(before, self.buffer.block(self._before_row, "update"))
        self.layout.weight_norms_into(self.buffer.block(self._before_row, "weight"))
        if self._before_note is not None:
            self._before_note.update = True

    def end(self, update_pending: bool = False) -> None:
        """Close the step; a full window starts its copy to the host.

        ``update_pending``: the caller applies the update after this returns (a loop
        without an optimizer object), so an update copied this step cannot be measured
        before its window is copied out; it is dropped then.
        """
        self._note.wall_time = time.time()  # type: ignore[union-attr]  # opened by begin
        loss = self._loss
        if self.loss_logged and loss is not None:
            self._losses.append((self.row, loss))
        self.loss_logged, self._loss = False, None
        self.step += 1
        self.row += 1
        if self.row >= self.flush_every:
            if update_pending and self._before is not None and self._before_row == self.row - 1:
                self._before = None
            self.flush()

    def flush(self) -> None:
        """Start the copy of the window to the host (the host work follows in ``process``)."""
        self.settle_update()
        if self._losses:
            self.buffer.put_many("loss", self._losses)
            self._losses = []
        rows, self.row = self.row, 0
        self._drained.append((self.buffer.drain(rows), rows, self.layout))
        self.process(wait=False)

    def process(self, wait: bool) -> None:
        """Host work for samples and windows whose copy has landed (all of them if
        ``wait``); windows are written when the pacer says their cost is due, several at
        once (one journal pass, one store transaction per layout)."""
        if self.journal.pending():
            started = time.perf_counter()
            if self.journal.judge(wait):
                self.pacer.judged(time.perf_counter() - started)
        if not self._drained or not (wait or self.pacer.write_due()):
            return  # most steps: nothing to write, or not yet
        ready = len(self._drained) if wait else next(
            (i for i, (d, _, _) in enumerate(self._drained) if not d.ready()), len(self._drained))
        started = time.perf_counter()
        for rows, arrays, layout in _merged([self._drained.popleft() for _ in range(ready)]):
            self.journal.flush(arrays, rows, layout)
        if ready:
            self.pacer.wrote(ready, time.perf_counter() - started)

    def relayout(self, layout: ParamLayout) -> None:
        """Record the steps from now on under ``layout`` (the parameters a step updates
        changed): the window so far is copied out under the old one, and a buffer as wide
        as the new one takes its place."""
        if self.row:
            self.flush()
        self.layout = layout
        self._host = _on_host(layout)
        self.buffer = StepBuffer(self.flush_every, len(layout), SCALARS, layout.device,
                                 layout.buffer_dtype)
