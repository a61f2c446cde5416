"""Keras 3 on the torch backend: ``keras_probe`` before training, and
``GradHealthKerasCallback`` watching ``model.fit``.

    import os
    os.environ["KERAS_BACKEND"] = "torch"  # before the first `import keras`
    import keras
    from gradhealth.integrations.keras import GradHealthKerasCallback, keras_probe

    print(keras_probe(model, x_batch, y_batch))  # per-layer numbers and findings

    health = GradHealthKerasCallback(store="run.db")
    model.fit(x, y, epochs=5, callbacks=[health])
    print(health.report())  # remedies in Keras terms: kernel_initializer="he_normal", ...

Needs ``pip install 'gradhealth[keras]'`` and Keras on the torch backend (the
``KERAS_BACKEND`` environment variable, read once when keras is first imported; this
module never imports keras itself until the probe runs or the callback is constructed).

**How Keras layers are observed** (``catalog``, ``taps``): Keras keeps its layers in
Python lists, out of ``named_modules()``, but each is a ``torch.nn.Module`` whose call
fires torch forward hooks; the layers are mapped onto gradhealth's one vocabulary and
measured by the core's taps and records, a fused ``Dense(activation=...)`` as two
entries (``dense``, ``dense.activation``), as its torch twin would be. ``keras_probe``
(``probe``) measures one batch with them.

**The callback, every step.** Every Keras variable is a ``torch.nn.Parameter``, but all
sit in one ``ParameterDict`` of the root, so the callback watches a *view*
(``layer_view``): one ``nn.Module`` child per Keras layer holding that layer's trainable
variables, the very same Parameters. Keras's torch trainer zeroes the gradients only at
the *next* step, after its forward, so in ``on_train_batch_end`` each ``.grad`` still
holds this step's gradient as backward left it (``clipvalue`` / ``clipnorm`` clip copies
inside the optimizer: the norms are pre-clip); the callback calls the watch's explicit
step there. The loss is recorded from ``model.compute_loss`` (wrapped on the instance
while fit runs, training only; no host sync), of which Keras's logged ``loss`` is the
running mean. Per-layer gradient norms, the global norm, the loss, spikes and
non-finite steps are recorded every step.

**The callback, every ``sample_every`` steps** (the first included; ``None``: never):
activation statistics, with the probe's mechanism and the watch's sampler (``sampler``),
judged over a window of samples with the probe's rules and stored per layer. Not sampled:
a model compiled with ``jit_compile=True`` (a compiled ``train_step`` runs no Python
hook). When the optimizer scales the loss (``LossScaleOptimizer``,
``loss_scale_factor=``) the sampled dL/d(out), like the recorded gradient norms, carry
that scale.

``findings`` and ``report()`` phrase every remedy in Keras terms (``keras_finding`` does
the same for any finding, e.g. from ``gh.probe``).

Keras has no callback hook for an exception inside ``fit``: if fit may raise and the
process goes on, use ``with health: model.fit(...)`` or call ``health.close()`` (which
also removes the hooks of a sampled step).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

import torch
from torch import nn

from gradhealth.errors import UnsupportedModelError
from gradhealth.integrations._adapter import WatchingAdapter
from gradhealth.integrations.keras.backend import keras_on_torch
from gradhealth.integrations.keras.remedies import keras_finding
from gradhealth.integrations.keras.sampler import KerasSampler
from gradhealth.report.report import Report
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import worded
from gradhealth.training.pacer import FlushEvery

__all__ = ["GradHealthKerasCallback", "layer_view"]

_CONCRETE: dict[type, type] = {}


def _keras_base(cls: type) -> type:
    """``cls`` with ``keras.callbacks.Callback`` as a base, built once per class.

    keras is imported here, at the callback's construction, never at this module's
    import: importing keras picks its backend for the whole process.
    """
    if cls not in _CONCRETE:
        keras = keras_on_torch("gradhealth's Keras callback")
        _CONCRETE[cls] = type(cls.__name__, (cls, keras.callbacks.Callback),
                              {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _CONCRETE[cls]


class GradHealthKerasCallback(WatchingAdapter):
    """A ``keras.callbacks.Callback`` that watches ``model.fit`` (see the module docstring).

    ``store``: path of a new run store; ``flush_every``: steps between host copies;
    ``sample_every``: activation statistics every K steps (None: never).
    """

    model: Any  # the Keras model being fit; keras.callbacks.Callback sets it

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(_keras_base(cls))

    def __init__(self, *, store: str | os.PathLike | None = None,
                 flush_every: FlushEvery = "auto",
                 sample_every: int | Literal["auto"] | None = "auto"):
        super().__init__()  # keras.callbacks.Callback.__init__
        self._configure(store, flush_every, sample_every)
        self._patched: Any = None  # the Keras model whose compute_loss is wrapped
        self._sampler: KerasSampler | None = None

    # -- Keras hooks -------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        model = self.model
        self._check_store(writer=True)
        w = self._start(layer_view(model), None)
        # a compiled train_step (jit_compile=True) runs no Python hook: no sampling
        sample = self.sample_every is not None and not getattr(model, "jit_compile", False)
        self._sampler = KerasSampler(model, w.pacer) if sample else None
        self._wrap_compute_loss(model)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        sampler, w = self._sampler, self.watch
        if sampler is not None and w is not None and sampler.due(w.steps):
            sampler.arm()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        w = self.watch
        if w is None:
            return
        sample = self._sampler.take() if self._sampler is not None else None
        if sample is not None:  # judged once its copy has landed, as the watch's own
            w.journal.sample(w.steps, sample)
        w.step()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    # -- results in Keras terms ----------------------------------------------------------
    @property
    def findings(self) -> list[Finding]:
        return [keras_finding(f) for f in self._open().findings]

    def report(self) -> Report:
        report = self._open().report()
        return Report(layers=report.layers, findings=[keras_finding(f) for f in report.findings],
                      meta={**report.meta, "framework": "keras"},
                      incidents=[worded(i, "keras") for i in report.incidents])

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.disarm()
        self._unwrap_compute_loss()
        super().close()

    # -- the loss ----------------------------------------------------------------------
    def _wrap_compute_loss(self, model: Any) -> None:
        self._unwrap_compute_loss()
        original = model.compute_loss

        @functools.wraps(original)
        def compute_loss(*args: Any, **kwargs: Any) -> Any:
            loss = original(*args, **kwargs)
            w = self.watch
            if (w is not None and torch.is_grad_enabled() and isinstance(loss, torch.Tensor)
                    and loss.numel() == 1):
                w.log_loss(loss.detach())
                if self._sampler is not None:
                    self._sampler.log_loss(loss)
            return loss

        # object.__setattr__: neither Keras's variable tracker nor nn.Module sees it
        object.__setattr__(model, "compute_loss", compute_loss)
        self._patched = model

    def _unwrap_compute_loss(self) -> None:
        model, self._patched = self._patched, None
        if model is not None and "compute_loss" in vars(model):
            object.__delattr__(model, "compute_loss")


class _LayerParams(nn.Module):
    """One Keras layer's trainable variables, registered under their Keras names."""


class _KerasLayers(nn.Module):
    """The view of a Keras model: one ``_LayerParams`` child per layer (never called)."""


def layer_view(model: Any) -> nn.Module:
    """An ``nn.Module`` whose children are ``model``'s Keras layers, each owning its
    trainable variables (the same ``torch.nn.Parameter`` objects, in Keras's order).

    A child is named by its layer's path inside ``model`` (``dense``; ``block/dense``
    for a nested model); ``.`` in a name becomes ``_`` (torch forbids it).
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected a Keras model on the torch backend (a torch.nn.Module), got "
            f"{type(model).__name__}; set KERAS_BACKEND=torch before importing keras")
    # named after the Keras model's class, so reports and the store say "Sequential"
    view = type(type(model).__name__, (_KerasLayers,), {"__module__": __name__})()
    keras_model: Any = model  # a Keras model: its Keras attributes are not nn.Module's
    prefix = f"{keras_model.name}/"
    for variable in keras_model.trainable_weights:
        param = variable.value
        if not isinstance(param, nn.Parameter):
            raise UnsupportedModelError(
                f"Keras variable {variable.path!r} is a {type(param).__name__}, not a "
                f"torch Parameter: is the model built, and Keras on the torch backend?")
        path = variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path
        layer, _, name = path.rpartition("/")
        layer = (layer or keras_model.name).replace(".", "_")
        child = view._modules.get(layer)
        if child is None:
            child = _LayerParams()
            view.add_module(layer, child)
        key = name.replace(".", "_")
        while key in child._parameters:
            key += "_"
        child.register_parameter(key, param)
    return view
