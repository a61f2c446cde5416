"""Observe every Keras layer call on the torch backend, with handles; leave nothing behind.

A Keras 3 layer on the torch backend is a ``torch.nn.Module``: ``Layer.__call__`` (which
converts inputs, builds, fills in ``training`` and masks) calls ``nn.Module.__call__``,
whose ``forward`` runs ``layer.call``. So torch forward hooks *do* fire on each layer, but
``named_modules()`` does not list the layers (Keras keeps them in Python lists), which is
why ``gradhealth.measure.taps.Taps`` on the model sees none of them. ``KerasTaps`` registers the
hooks on the layers of ``keras_catalog.entries`` instead: a pre-hook and a hook per layer,
held as ``RemovableHandle``s, and, for a fused activation (``Dense(activation=...)``), a
wrapper put on the layer *instance*'s ``activation`` attribute (the function
``layer.call`` calls), which measures the pre-activation and the activation's output
separately. Leaving the context removes every hook and puts back each original function
(the very object), also when the forward pass raised.

What each call measures is what ``Taps`` measures for a torch module, with the same
``gradhealth.measure.stats`` functions into the same ``taps.Call`` records: moments of the
primary output and (through a hook on that output tensor, which lives and dies with the
autograd graph) of dL/d(output), non-finite counts, saturation for bounded activations,
per-unit liveness for rectifiers, percentiles of leaves. Nothing synchronises with the
host. ``lean=True`` is ``Taps(lean=True)``: what a sampled training step needs.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from gradhealth.integrations.keras.catalog import Entry
from gradhealth.measure import stats
from gradhealth.measure.taps import Call, floating_leaves, nonfinite_count


class KerasTaps:
    """Measure every call of every entry while the context is open (see the module doc).

    ``calls`` lists the calls in completion order; ``failing_layer`` names the innermost
    layer whose call was in progress when the forward pass raised; ``batch_size`` is the
    leading dimension of the first call's first tensor input.
    """

    def __init__(self, entries: Sequence[Entry], *, lean: bool = False):
        self.entries = list(entries)
        self.lean = lean
        self.calls: list[Call] = []
        self.stack: list[tuple[Entry, dict[str, Any]]] = []
        self.batch_size: int | None = None
        self._handles: list[Any] = []
        self._wrapped: list[tuple[Any, Any]] = []  # (layer, its original activation)
        self._last_layer: Entry | None = None  # the last weight layer seen (conv axis)

    # -- context management ---------------------------------------------------------
    def __enter__(self) -> "KerasTaps":
        try:
            for entry in self.entries:
                if entry.fused:
                    continue
                layer = entry.layer
                self._handles.append(layer.register_forward_pre_hook(
                    self._pre_hook(entry), with_kwargs=True))
                self._handles.append(layer.register_forward_hook(
                    self._post_hook(entry), with_kwargs=True))
                if entry.split is not None:
                    self._wrap_activation(entry, entry.split)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and put every original activation back (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer, original in reversed(self._wrapped):
            # object.__setattr__: past Keras's tracker and nn.Module's attribute routing,
            # exactly as the wrapper was put there
            object.__setattr__(layer, "activation", original)
        self._wrapped.clear()

    def release(self) -> None:
        """Drop references to activations so their memory can be freed."""
        for call in self.calls:
            call.output_ref = None

    @property
    def failing_layer(self) -> str | None:
        return self.stack[-1][0].name if self.stack else None

    # -- hooks ------------------------------------------------------------------------
    def _pre_hook(self, entry: Entry):
        def hook(layer: Any, args: tuple, kwargs: dict) -> None:
            inputs = floating_leaves((args, kwargs))
            info: dict[str, Any] = {"ids": tuple(id(t) for t in inputs), "error": None,
                                    "in_nonfinite": None, "fused_done": False}
            if self.batch_size is None and not self.stack:
                self.batch_size = _batch_size(args)
            self.stack.append((entry, info))
            try:
                info["in_nonfinite"] = None if self.lean else nonfinite_count(inputs)
            except Exception as err:  # a statistic must never break the user's model
                info["error"] = f"{type(err).__name__}: {err}"
            return None

        return hook

    def _post_hook(self, entry: Entry):
        def hook(layer: Any, args: tuple, kwargs: dict, output: Any) -> None:
            _, info = self.stack.pop() if self.stack else (entry, {})
            if info.get("fused_done"):
                return None  # the activation wrapper recorded both halves of this call
            self._record(entry, info, output)
            return None

        return hook

    def _wrap_activation(self, entry: Entry, act: Entry) -> None:
        layer = entry.layer
        original = vars(layer)["activation"]

        @functools.wraps(original)
        def activation(x: Any, *args: Any, **kwargs: Any) -> Any:
            top = self.stack[-1] if self.stack and self.stack[-1][0] is entry else None
            info = top[1] if top is not None else {}
            self._record(entry, info, x)  # the pre-activation: the weight layer's output
            y = original(x, *args, **kwargs)
            inner = {"ids": (id(x),) if isinstance(x, torch.Tensor) else (), "error": None,
                     "in_nonfinite": None}
            if not self.lean and isinstance(x, torch.Tensor) and x.is_floating_point():
                inner["in_nonfinite"] = nonfinite_count([x])
            self._record(act, inner, y)
            info["fused_done"] = True
            return y

        object.__setattr__(layer, "activation", activation)
        self._wrapped.append((layer, original))

    # -- measurement ------------------------------------------------------------------
    def _record(self, entry: Entry, info: dict[str, Any], output: Any) -> None:
        call = Call(name=entry.name, module=entry.layer, index=len(self.calls),
                    leaf=entry.leaf, lean=self.lean, in_nonfinite=info.get("in_nonfinite"),
                    input_ids=info.get("ids", ()), error=info.get("error"))
        self.calls.append(call)
        try:
            self._measure(call, entry, output)
        except Exception as err:
            call.error = f"{type(err).__name__}: {err}"

    def _measure(self, call: Call, entry: Entry, output: Any) -> None:
        outs = floating_leaves(output)
        if not outs:
            return
        primary = outs[0]
        call.output_ref = primary
        moments = stats.lean_sums if self.lean else stats.moment_sums
        call.out = moments(primary)
        call.out_numel = primary.numel()
        if not self.lean:  # lean: the flag of the sums stands for every output
            call.out_nonfinite = nonfinite_count(outs)
        if entry.band is not None:
            call.saturated = stats.saturated_count(primary, entry.band)
        if entry.rectifier and primary.dim() >= 2:
            owner = entry if entry.fused else self._last_layer
            channels_first = owner is not None and owner.channels_first
            call.alive = stats.unit_alive(primary, stats.unit_axis(primary, channels_first))
        if entry.leaf and entry.params:
            self._last_layer = entry
        if entry.leaf and not self.lean:
            call.out_sample = stats.quantile_sample(primary)
        elif entry.leaf and entry.activation is not None:
            call.out_sample = stats.quantile_sample(primary, stats.LEAN_QUANTILE_SAMPLE)
        if primary.requires_grad:
            def grad_hook(grad: torch.Tensor, call: Call = call) -> None:
                call.grad = moments(grad)
                if call.leaf and not self.lean:
                    call.grad_sample = stats.quantile_sample(grad)
            primary.register_hook(grad_hook)


def _batch_size(args: tuple) -> int | None:
    for value in floating_leaves(args) or [a for a in args if isinstance(a, torch.Tensor)]:
        if value.dim() >= 1:
            return int(value.shape[0])
    return None
