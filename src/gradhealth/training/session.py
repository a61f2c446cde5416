"""A watch over every model that an optimizer steps, with no edit to the training code.

``gradhealth run`` runs a script inside a ``Session``. The session attaches to torch
globally, never to the script's objects:

- torch's global optimizer step hooks (``register_optimizer_step_pre_hook`` / ``_post_``):
  at the first step of an optimizer it has not seen, the session finds the model the
  optimizer trains (``gradhealth.training.discover``) and opens a ``gh.watch`` on that
  model and optimizer, with its own store; from then on the watch's own hooks record
  every step. Several optimizers (a GAN) get a watch, a layout and a store each;
- the global module forward hooks, until the first optimizer step: the root modules
  called (``discover.Roots``);
- ``torch.autograd.backward`` (which ``Tensor.backward`` calls) and
  ``torch.amp.GradScaler.scale``, wrapped while the session runs: the scalar tensors
  backwarded since the last optimizer step, summed on the device (no host sync), are the
  loss of the next step of a model that does not return its own (``output.loss``);
  a loss GradScaler scaled is recorded unscaled, and the watch gets the scaler.

A step with a closure (``optimizer.step(closure)``: LBFGS, Lightning) calls the model
inside the closure: its optimizer is looked up after the closure's first evaluation.
An error while setting up a watch never breaks the training: that optimizer is left
unwatched and the error is kept in ``problems``; so is an optimizer the script already
watches itself (``gh.watch``). Under several processes every rank
watches (the norms of FSDP2 shards need every rank) and only rank 0 writes the stores.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradhealth.measure import distributed
from gradhealth.measure.wrappers import eager
from gradhealth.store.writer import RunStore
from gradhealth.training import discover
from gradhealth.training.closure import FirstEvaluation, closure_of, with_closure
from gradhealth.training.guard import Guard
from gradhealth.training.hooks import Hooks
from gradhealth.training.watch import Watch

TICK_S = 0.5
"""``on_tick`` runs after an optimizer step at most this often (the live status)."""


@dataclass
class Watched:
    """One model the session found, its optimizer's watch, and where it is stored."""

    name: str  # the model's class name
    watch: Watch
    store: Path | None
    writer: RunStore | None  # the session's: it writes the outcome before closing it


def sibling(path: Path, index: int, name: str) -> Path:
    """Where the ``index``-th model's store goes beside the first one's ``path``."""
    return path.with_name(f"{path.stem}-{index}-{name}{path.suffix or '.db'}")


class Session:
    """Watches what a process trains; ``start`` before the training code, ``close`` after.

    ``store``: the first model's store (the next ones beside it, ``sibling``), None for
    none; ``flush_every``, ``sample_every`` and ``guard`` are ``gh.watch``'s; ``meta``
    goes into every store (under ``"command"``); ``on_tick(session)`` runs after a step,
    at most every ``TICK_S`` seconds.
    """

    def __init__(self, *, store: str | Path | None = None, flush_every: int = 50,
                 sample_every: int | None = 50, guard: bool | Guard = False,
                 meta: dict[str, Any] | None = None,
                 on_tick: Callable[[Session], None] | None = None):
        self.store = Path(store) if store is not None else None
        self.flush_every, self.sample_every, self.guard = flush_every, sample_every, guard
        self.meta = dict(meta or {})
        self.on_tick = on_tick
        self.watched: list[Watched] = []
        self.problems: list[str] = []
        self.roots = discover.Roots()
        self._by_optimizer: dict[int, Watch | None] = {}
        self._handles: list[Any] = []
        self._patched: list[tuple[Any, str, Any]] = []
        self._loss: torch.Tensor | None = None
        self._scaled: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}
        self._scaler: Any = None
        self._last_tick = 0.0
        self._closed = False

    # -- attaching -------------------------------------------------------------------
    def start(self) -> Session:
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        self.roots.start()
        self._handles = [register_optimizer_step_pre_hook(self._pre_step),
                         register_optimizer_step_post_hook(self._post_step)]
        self._patch(torch.autograd, "backward", self._backward)
        self._patch(torch.amp.GradScaler, "scale", self._scale)
        return self

    def _patch(self, owner: Any, name: str,
               make: Callable[[weakref.ref[Session], Any], Any]) -> None:
        original = getattr(owner, name)
        self._patched.append((owner, name, original))
        # the stand-in reaches the session through a weak reference: torch caches the
        # functions of its namespaces (torch.overrides' index, built while it stands in),
        # and a strong one would keep every watched model (a DDP one and its process
        # group) alive into the interpreter's shutdown, where gloo's teardown aborts
        setattr(owner, name, make(weakref.ref(self), original))

    @staticmethod
    def _backward(ref: weakref.ref[Session], original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            session = ref()
            if (session is not None and not session._closed
                    and isinstance(tensors, torch.Tensor) and tensors.numel() == 1):
                session._saw_loss(tensors)
            return original(tensors, *args, **kwargs)
        return backward

    @staticmethod
    def _scale(ref: weakref.ref[Session], original: Callable[..., Any]) -> Callable[..., Any]:
        def scale(scaler: Any, outputs: Any) -> Any:
            scaled = original(scaler, outputs)
            session = ref()
            if (session is not None and not session._closed
                    and isinstance(outputs, torch.Tensor) and outputs.numel() == 1):
                session._scaler = scaler
                session._scaled = {id(scaled): (weakref.ref(scaled), outputs.detach())}
            return scaled
        return scale

    def _saw_loss(self, tensor: torch.Tensor) -> None:
        known = self._scaled.get(id(tensor))
        loss = known[1] if known is not None and known[0]() is tensor else tensor.detach()
        self._loss = loss.reshape(()) if self._loss is None else self._loss + loss.reshape(())

    def ignore(self, optimizer: torch.optim.Optimizer) -> None:
        """Leave ``optimizer`` unwatched (its steps are not the training's: a benchmark's
        other configurations)."""
        self._by_optimizer.setdefault(id(optimizer), None)

    # -- the optimizer's step --------------------------------------------------------
    def _pre_step(self, optimizer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        key = id(optimizer)
        if key in self._by_optimizer:
            watch = self._by_optimizer[key]
            if watch is not None and closure_of(args, kwargs) is None:
                self._give_loss(watch)
            return None
        closure = closure_of(args, kwargs)
        if closure is None:
            watch = self._discover(optimizer)
            if watch is not None:
                self._give_loss(watch)
            return None  # the new watch's own step pre-hook runs next, in this same step
        # the closure calls the model: look it up once the closure has run
        return with_closure(args, kwargs, FirstEvaluation(
            closure, lambda loss: self._discover_in_closure(optimizer, loss)))

    def _discover_in_closure(self, optimizer: Any, loss: Any) -> None:
        watch = self._discover(optimizer)
        if watch is not None:  # its pre-hook has passed for this step: open it here
            watch.hooks.begin_after_closure(loss)

    def _post_step(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        self._loss = None
        self._scaled = {}
        if self.roots.recording:
            self.roots.stop()  # the models of later optimizers: recorded roots, else gc
        if self.on_tick is not None:
            now = time.monotonic()
            if now - self._last_tick >= TICK_S:
                self._last_tick = now
                self.on_tick(self)

    def _give_loss(self, watch: Watch) -> None:
        if self._loss is not None and not watch.recorder.loss_logged:
            watch.recorder.log_loss(self._loss)
        self._loss = None

    def _discover(self, optimizer: torch.optim.Optimizer) -> Watch | None:
        self._by_optimizer[id(optimizer)] = None
        if any(isinstance(getattr(hook, "__self__", None), Hooks)
               for hook in optimizer._optimizer_step_pre_hooks.values()):
            self.problems.append(f"{type(optimizer).__name__}: the script watches it itself "
                                 f"(gh.watch); left to that watch")
            return None
        try:
            model = discover.owner(discover.optimizer_params(optimizer), self.roots.alive())
            watch = self._open(model, optimizer)
        except Exception as err:  # never break the training: leave this optimizer alone
            self.problems.append(f"{type(optimizer).__name__}: not watched: {err}")
            return None
        self._by_optimizer[id(optimizer)] = watch
        return watch

    def _open(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Watch:
        name = type(eager(model)[0]).__name__
        path = None
        if self.store is not None and distributed.is_rank_zero():
            index = len(self.watched)
            path = self.store if index == 0 else sibling(self.store, index + 1, name)
        store = RunStore.create(path, {"command": self.meta}) if path is not None else None
        scaler = self._scaler
        if scaler is not None and any(w.watch.scaler is scaler for w in self.watched):
            scaler = None  # one watch taps a scaler's update(); the others go without
        try:
            watch = Watch(model, optimizer, store=store, scaler=scaler,
                          flush_every=self.flush_every, sample_every=self.sample_every,
                          guard=self.guard)
        except BaseException:
            if store is not None:
                store.close()
                store.path.unlink(missing_ok=True)
            raise
        self.watched.append(Watched(name, watch, path, store))
        return watch

    # -- closing ---------------------------------------------------------------------
    def close(self, outcome: str) -> None:
        """Detach from torch, flush and close every watch, and write ``outcome`` (how the
        training ended, in words) into every store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.roots.stop()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()
        for w in self.watched:
            store = w.writer
            try:
                w.watch.close()
            except Exception as err:
                self.problems.append(f"{w.name}: closing its watch failed: {err!r}")
            if store is not None:
                try:
                    store.set_meta("outcome", outcome)
                finally:
                    store.close()
