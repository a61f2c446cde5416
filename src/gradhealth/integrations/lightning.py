"""Lightning: ``GradHealthCallback`` watches a LightningModule through ``Trainer.fit``.

    from gradhealth.integrations.lightning import GradHealthCallback

    health = GradHealthCallback(store="run.db")
    trainer = lightning.pytorch.Trainer(max_epochs=3, callbacks=[health])
    trainer.fit(module)
    print(health.report())

Needs ``pip install 'gradhealth[lightning]'`` (``lightning``; a ``pytorch_lightning``-only
install works too). The callback opens a ``gh.watch`` on the LightningModule at fit start
and closes it at fit end, or when fit raises (``on_exception``): no hook is left behind.

**When a step is recorded.** Lightning runs forward and backward *inside*
``optimizer.step(closure)``, and wraps the optimizer (and, under AMP, the scaler) its own
way. The callback therefore drives the watch's explicit-step API from
``on_before_optimizer_step``, which Lightning calls after the closure: backward done,
gradients accumulated and unscaled under AMP, *before* Lightning's gradient clipping
(``gradient_clip_val``), so the recorded norms are the pre-clip ones.

**Loss.** Taken from ``on_before_backward`` as a device tensor (no host sync), summed
over the micro-batches of one optimizer step: with ``accumulate_grad_batches=k`` Lightning
hands each backward loss/k, so the record is the mean micro-batch loss.

**Activation statistics** (every ``sample_every`` steps) start at ``on_train_batch_start``,
so they are measured whether or not ``training_step`` calls ``self(x)``.

``log_summary=True`` also sends, once per flush window, the latest gradhealth numbers
(``gradhealth/global_norm``, ``loss``, ``findings``, ``spikes``, ``nonfinite_steps``) to
every logger of the Trainer. For per-step curves write a store and export it with
``gradhealth.integrations.tensorboard``.

One optimizer only (``configure_optimizers`` returning several raises at fit start: watch
each sub-network with ``gh.watch`` inside ``training_step`` instead). Under several
processes only global rank 0 writes the store.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from gradhealth.errors import ConfigError, NoTrainableParametersError
from gradhealth.integrations._adapter import WatchingAdapter
from gradhealth.integrations._optional import base_class
from gradhealth.training.pacer import Every, FlushEvery
from gradhealth.training.watch import Watch

if TYPE_CHECKING:  # the framework's class, or at run time a stand-in when it is missing
    from lightning.pytorch import Callback as _Callback
else:
    _Callback = base_class(("lightning.pytorch", "pytorch_lightning"), "Callback",
                           feature="gradhealth's Lightning callback", extra="lightning")

__all__ = ["GradHealthCallback"]


class GradHealthCallback(WatchingAdapter, _Callback):
    """Watch the LightningModule during ``Trainer.fit`` (see the module docstring).

    ``store``: path of a new run store (written by global rank 0). ``flush_every`` and
    ``sample_every`` are ``gh.watch``'s. ``log_summary``: log the latest numbers to the
    Trainer's loggers once per flush window. After (or during) fit, ``.watch`` is the
    ``Watch`` and ``.report()`` its report.
    """

    def __init__(self, *, store: str | os.PathLike | None = None, flush_every: FlushEvery = "auto",
                 sample_every: Every = "auto", log_summary: bool = False):
        _Callback.__init__(self)  # without Lightning: MissingDependencyError, naming the extra
        self._configure(store, flush_every, sample_every)
        self.log_summary = bool(log_summary)
        self._loss: torch.Tensor | None = None

    # -- Lightning hooks -----------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not any(p.requires_grad for p in pl_module.parameters()):
            raise NoTrainableParametersError(
                f"GradHealthCallback expected a LightningModule with trainable parameters, "
                f"got {type(pl_module).__name__} with none requiring grad; unfreeze some")
        self._check_store(writer=trainer.is_global_zero)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigError(
                f"GradHealthCallback watches a module trained by one optimizer, got "
                f"{len(trainer.optimizers)}; watch each sub-network inside training_step "
                f"instead (gh.watch(self.generator) and w.step() after its backward)")
        self._loss = None
        self._start(pl_module, None, writer=trainer.is_global_zero)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if self.watch is not None:
            # what the root forward pre-hook does when training_step calls self(x): arm the
            # sampled step's taps (a no-op when armed already or on unsampled steps)
            self.watch.hooks.on_forward(pl_module, _as_args(batch), {})

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        loss = loss.detach()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = getattr(scaler, "_scale", None)  # 16-mixed hands the scaled loss; no sync
        if isinstance(scale, torch.Tensor):
            loss = loss / scale.to(loss.device)
        self._loss = loss.clone() if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.watch is None:
            return
        watch = self.watch
        loss, self._loss = self._loss, None
        watch.step(loss=loss.reshape(()) if loss is not None else None)
        if self.log_summary and watch.steps % watch.pacer.flush_every == 0:
            self._log(trainer, watch)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

    # -- logging -----------------------------------------------------------------------
    def _log(self, trainer: Any, watch: Watch) -> None:
        s = watch.summary()
        metrics = {"gradhealth/global_norm": s["last_global_norm"],
                   "gradhealth/loss": s["last_loss"],
                   "gradhealth/findings": len(watch.findings),
                   "gradhealth/spikes": s.get("spikes"),
                   "gradhealth/nonfinite_steps": s.get("nonfinite_steps")}
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def _as_args(batch: Any) -> tuple:
    """The batch as forward arguments (the watch reads the batch size from the first tensor)."""
    if isinstance(batch, (list, tuple)):
        return tuple(batch)
    if isinstance(batch, dict):
        return tuple(batch.values())
    return (batch,)
