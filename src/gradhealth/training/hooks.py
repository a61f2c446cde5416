"""Where the watch attaches: the root module's forward hooks, the optimizer's step hooks
and GradScaler's ``update``, all held as removable handles.

- root forward pre-hook: note the batch for the guard's replay, arm the sampler on the
  first training forward of a sampled step (never in evaluation or in our own replay);
- root forward hook: let later forwards run compiled again, record a loss the model
  returns itself (``output.loss``);
- optimizer step pre-hook: open the step (``begin``), or, for ``optimizer.step(closure)``,
  hand the optimizer a wrapped closure that opens it after its first evaluation
  (``gradhealth.training.closure``);
- optimizer step post-hook: close the step (``end``);
- GradScaler: a step it skipped (``amp_skip``).

The root's two forward hooks are on the root only while a step needs them (``sync``, at
the end of every step that may change them): the pre-hook under the guard (its replay
needs the batch), without an optimizer object, and for a sampled step; the post-hook for
a sampled step, and on every step once the model's output carries its loss (or until the
first output has shown it does not; a sampled step looks again). A module with forward
hooks takes PyTorch's slow call path: on a millisecond step the two hooks cost about 1%
(measured in docs/benchmarks.md, "Steps of a millisecond"). A compiled model keeps them
throughout (hooks added or removed around a compiled module may make it compile again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradhealth.measure.loss import returned_loss
from gradhealth.training.closure import FirstEvaluation, closure_of, with_closure
from gradhealth.training.recorder import Recorder
from gradhealth.training.replay import LastCall
from gradhealth.training.sampler import Sampler
from gradhealth.training.scaler import ScalerTap


class Hooks:
    """The watch's hooks; ``begin``/``end``/``amp_skip`` are the watch's step callbacks."""

    def __init__(self, recorder: Recorder, sampler: Sampler, *, guarded: bool,
                 device: torch.device, begin: Callable[[], Any], end: Callable[[], None],
                 amp_skip: Callable[[], None], compiled: bool = False):
        self.recorder, self.sampler = recorder, sampler
        self.keep = compiled  # the forward hooks stay on throughout (see the module doc)
        self.model: nn.Module | None = None
        self._pre: Any = None  # the root's forward hook handles, while on
        self._post: Any = None
        # whether the model's output carries its loss: None until a training forward shows
        self.loss_outputs: bool | None = None
        self.guarded, self.device = guarded, device
        self.begin, self.end, self.amp_skip = begin, end, amp_skip
        self.closure: FirstEvaluation | None = None  # this step's, for step(closure)
        self.last: LastCall | None = None  # the last training forward (guarded only)
        self.scaler: ScalerTap | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []

    def register(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 scaler: Any) -> None:
        self.optimizer, self.model = optimizer, model
        self.sync()
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._pre_step))
            self._handles.append(optimizer.register_step_post_hook(self._post_step))
        if scaler is not None:
            self.scaler = ScalerTap(scaler, self.amp_skip)

    def sync(self) -> None:
        """Put the root's forward hooks on, or take them off, for the next step (see the
        module doc)."""
        if self.model is None:
            return
        sampled = self.sampler.pending or self.sampler.armed
        pre = self.keep or sampled or self.guarded or self.optimizer is None
        post = self.keep or sampled or self.loss_outputs is not False
        if pre != (self._pre is not None):
            self._pre = (self.model.register_forward_pre_hook(self.on_forward, with_kwargs=True)
                         if pre else self._pre.remove())
        if post != (self._post is not None):
            self._post = (self.model.register_forward_hook(self._after_forward, with_kwargs=True)
                          if post else self._post.remove())

    def remove(self) -> None:
        """Remove every hook (idempotent), and the sampler's if a sampled step is armed."""
        taps = self.sampler.disarm()
        if taps is not None:
            taps.release()
        for handle in [*self._handles, self._pre, self._post]:
            if handle is not None:
                handle.remove()
        self._handles.clear()
        self._pre = self._post = None
        self.model = None
        if self.scaler is not None:
            self.scaler.remove()

    def scale(self) -> torch.Tensor | None:
        """GradScaler's loss scale as a device tensor (None without one)."""
        return self.scaler.scale() if self.scaler is not None else None

    def _pre_step(self, optimizer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not kwargs and len(args) < 2:  # ``optimizer.step()``: no closure (most steps)
            self.begin()
            return None
        closure = closure_of(args, kwargs)
        if closure is None:
            self.begin()
            return None
        # the gradients are the closure's to compute: open the step once it has run
        self.closure = FirstEvaluation(closure, self.begin_after_closure)
        return with_closure(args, kwargs, self.closure)

    def begin_after_closure(self, loss: Any) -> None:
        """Open the step once the closure has run (its loss recorded unless one was)."""
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and not self.recorder.loss_logged:
            self.recorder.log_loss(loss)
        self.begin()

    def _post_step(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        closure, self.closure = self.closure, None
        if closure is not None and not closure.done:  # the optimizer never called it
            self.begin()
        self.end()

    def on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not torch.is_grad_enabled():
            return None  # evaluation, or our own replay
        if self.optimizer is None:
            self.recorder.settle_update()  # the last step's update is applied by now
        if self.guarded:
            self.last = LastCall.capture(args, kwargs, self.device)
        if self.sampler.pending and not self.sampler.armed:
            self.sampler.arm(args, kwargs)
        return None

    def _after_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not torch.is_grad_enabled():
            return None
        self.sampler.forward_done()
        loss = returned_loss(output)
        if loss is not None and loss.numel() == 1:
            self.recorder.log_loss(loss)
            self.loss_outputs = True
        elif self.loss_outputs is None:
            self.loss_outputs = False
        return None
