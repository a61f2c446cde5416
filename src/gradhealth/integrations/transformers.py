"""Hugging Face: ``GradHealthTrainerCallback`` watches the model through ``Trainer.train``.

    from gradhealth.integrations.transformers import GradHealthTrainerCallback

    health = GradHealthTrainerCallback(store="run.db")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[health])
    trainer.train()
    print(health.report())

Needs ``pip install 'gradhealth[transformers]'`` (``transformers`` and ``accelerate``,
which the Trainer requires). ``on_train_begin`` receives the model and the optimizer
and opens ``gh.watch(model, optimizer)`` (unwrapping accelerate's
``AcceleratedOptimizer`` to the torch optimizer, whose step hooks the watch uses);
``on_train_end`` closes it. The loss is the ``.loss`` of the model's output, which the
watch records itself (no host sync); with gradient accumulation that is the last
micro-batch's loss of each optimizer step.

**Clipping.** The Trainer clips (``max_grad_norm``, default 1.0) before the optimizer
step, and no callback runs between backward and the clip, so the watch records the
gradients the optimizer applies: *after* clipping. The Trainer logs the pre-clip norm
as ``grad_norm``. To have gradhealth see the raw gradients, and record how often the clip
binds, move the clipping into the watch::

    args = TrainingArguments(..., max_grad_norm=0.0)
    health = GradHealthTrainerCallback(clip=gradhealth.ClipNorm(1.0))  # same clip

The Trainer has no hook for an exception inside ``train()``: if training may raise and the
process goes on, use the callback as a context manager (``with health: trainer.train()``)
or call ``health.close()``. Only the world-process-zero writes the store.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from gradhealth.errors import ConfigError, describe
from gradhealth.integrations._adapter import WatchingAdapter
from gradhealth.integrations._optional import base_class
from gradhealth.training.pacer import Every, FlushEvery

if TYPE_CHECKING:  # the framework's class, or at run time a stand-in when it is missing
    from transformers import TrainerCallback as _TrainerCallback
else:
    _TrainerCallback = base_class(("transformers",), "TrainerCallback",
                                  feature="gradhealth's Hugging Face Trainer callback",
                                  extra="transformers")

__all__ = ["GradHealthTrainerCallback"]


class GradHealthTrainerCallback(WatchingAdapter, _TrainerCallback):
    """Watch the model during ``Trainer.train`` (see the module docstring).

    ``store``: path of a new run store. ``flush_every`` and ``sample_every`` are
    ``gh.watch``'s; ``clip``: a clipper from ``gradhealth.clip`` the watch applies before
    each optimizer step (with ``max_grad_norm=0`` in the ``TrainingArguments``).
    """

    def __init__(self, *, store: str | os.PathLike | None = None, flush_every: FlushEvery = "auto",
                 sample_every: Every = "auto", clip: Any = None):
        _TrainerCallback.__init__(self)  # without transformers: MissingDependencyError
        self._configure(store, flush_every, sample_every)
        if clip is not None and not callable(clip):
            raise ConfigError(f"clip= expects a clipper such as gradhealth.ClipNorm(1.0), "
                              f"got {describe(clip)}")
        self.clip = clip

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise ConfigError(
                f"GradHealthTrainerCallback needs the model and the optimizer that the "
                f"Trainer passes to on_train_begin, got model={describe(model)}, "
                f"optimizer={describe(optimizer)}; add the callback to a transformers.Trainer")
        if self.clip is not None and (args.max_grad_norm or 0) > 0:
            raise ConfigError(
                f"clip= and TrainingArguments(max_grad_norm={args.max_grad_norm}) would clip "
                f"twice (the Trainer first); set max_grad_norm=0.0 to let gradhealth clip")
        writer = bool(state.is_world_process_zero)
        self._check_store(writer)
        watch = self._start(model, torch_optimizer(optimizer), writer=writer, clip=self.clip)
        if self.clip is None and (args.max_grad_norm or 0) > 0:
            # the Trainer clips before the step hooks run: the norms stored are post-clip,
            # and the report says so (a flat line at max_grad_norm is the clip, not health)
            watch.journal.storage.set_meta("clipped_before_record", float(args.max_grad_norm))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper such as accelerate's ``AcceleratedOptimizer``.

    The wrapper does not run ``torch.optim.Optimizer.__init__``, so step hooks registered
    on it never fire; the wrapped optimizer's ``step`` is the one that runs them.
    """
    while (not hasattr(optimizer, "_optimizer_step_pre_hooks")
           and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"expected the Trainer's torch optimizer, got {describe(optimizer)}")
    return optimizer
