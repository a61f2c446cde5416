"""``Taps`` on the layers of a Keras model (``catalog.entries``), with handles.

A Keras 3 layer on the torch backend is a ``torch.nn.Module`` whose call fires torch
forward hooks, so ``KerasTaps`` is the core's ``Taps`` hooked on each layer with its
entry's ``Measured``: the same hooks and measuring routine, into the same ``Call`` records.
A fused activation (``Dense(activation=...)``) gets a wrapper on the layer *instance*'s
``activation`` (the function ``layer.call`` calls), which measures the pre-activation and
the activation's output apart. Leaving removes every hook and puts back each original
function (the very object), also when the forward pass raised.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from gradhealth.integrations.keras.catalog import Entry
from gradhealth.measure.taps import Taps, floating_leaves, nonfinite_count


class KerasTaps(Taps):
    """Measure every call of every entry while the context is open (see the module doc).

    ``failing_module`` names the innermost layer whose call was in progress when the
    forward pass raised; ``batch_size`` is the leading dimension of the first call's
    first tensor input.
    """

    def __init__(self, entries: Sequence[Entry], *, lean: bool = False):
        super().__init__(None, lean=lean)  # type: ignore[arg-type]  # hooks the entries
        self.entries = list(entries)
        self.batch_size: int | None = None
        self._wrapped: list[tuple[Any, Any]] = []  # (layer, its original activation)

    def __enter__(self) -> KerasTaps:
        try:
            for entry in self.entries:
                if not entry.fused:
                    self._hook(entry.layer, entry.name, entry.what)
                if entry.split is not None:
                    self._wrap_activation(entry, entry.split)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook and put every original activation back (idempotent)."""
        super().remove()
        for layer, original in reversed(self._wrapped):
            # object.__setattr__: past Keras's tracker and nn.Module's attribute routing,
            # exactly as the wrapper was put there
            object.__setattr__(layer, "activation", original)
        self._wrapped.clear()

    def _pre_hook(self, name, what):
        measure = super()._pre_hook(name, what)

        def hook(layer: Any, args: tuple, kwargs: dict) -> None:
            if self.batch_size is None and not self.stack:
                self.batch_size = _batch_size(args)
            return measure(layer, args, kwargs)

        return hook

    def _post_hook(self, name, what):
        record = super()._post_hook(name, what)

        def hook(layer: Any, args: tuple, kwargs: dict, output: Any) -> None:
            if self.stack and self.stack[-1][1].get("fused_done"):
                self.stack.pop()  # the activation wrapper recorded both halves of this call
                return None
            return record(layer, args, kwargs, output)

        return hook

    def _wrap_activation(self, entry: Entry, act: Entry) -> None:
        layer = entry.layer
        original = vars(layer)["activation"]

        @functools.wraps(original)
        def activation(x: Any, *args: Any, **kwargs: Any) -> Any:
            top = self.stack[-1] if self.stack and self.stack[-1][0] == entry.name else None
            info = top[1] if top is not None else {}
            # the pre-activation: the weight layer's output
            self._record(entry.name, layer, entry.what, info, x)
            y = original(x, *args, **kwargs)
            inner: dict[str, Any] = {"ids": (id(x),) if isinstance(x, torch.Tensor) else (),
                                     "error": None, "in_nonfinite": None}
            if not self.lean and isinstance(x, torch.Tensor) and x.is_floating_point():
                inner["in_nonfinite"] = nonfinite_count([x])
            self._record(act.name, layer, act.what, inner, y)
            info["fused_done"] = True
            return y

        object.__setattr__(layer, "activation", activation)
        self._wrapped.append((layer, original))


def _batch_size(args: tuple) -> int | None:
    for value in floating_leaves(args) or [a for a in args if isinstance(a, torch.Tensor)]:
        if value.dim() >= 1:
            return int(value.shape[0])
    return None
