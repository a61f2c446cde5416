"""Keras layers in gradhealth's vocabulary: one ``Entry`` per thing the probe measures.

``named_modules()`` does not list a Keras model's layers (Keras keeps them in Python
lists), so ``entries(model)`` walks the layer tree and maps each layer onto
``gradhealth.measure.catalog``: activation layers and functions through the shared tables
(Keras's ``LeakyReLU`` is torch's, its ``"hard_sigmoid"`` is ``"hardsigmoid"``), norms,
recurrent and pass-through layers by Keras class. An entry carries what the core reads:
a ``records.Unit`` (role, kind, own trainable variables, the kernel as a torch weight,
Keras's fans) and a ``taps.Measured`` (band, rectifier, unit axis).

**Fused activations.** ``Dense(64, activation="sigmoid")`` is a weight layer and an
activation in one call, where the torch twin has ``nn.Linear`` then ``nn.Sigmoid``, and
the rules read the twin's shape (the depth profile takes dL/d(pre-activation) of each
weight layer, saturation the activation's output, remedies follow ``activation_after``).
So it is two entries: ``dense`` (the pre-activation, with the kernel) and
``dense.activation`` (type ``activation="sigmoid"``), which reads ``dense``. A ``linear``
activation (Keras's default) is none. Nested layers are named by their path
(``block/dense``), as in ``layer_view``; a ``.`` in a Keras name becomes ``_``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gradhealth.measure import catalog
from gradhealth.measure.catalog import Band
from gradhealth.measure.records import Unit
from gradhealth.measure.taps import Measured

NORMS = frozenset({"BatchNormalization", "LayerNormalization", "GroupNormalization",
                   "RMSNormalization", "UnitNormalization"})
RECURRENT = frozenset({"RNN"})  # SimpleRNN, LSTM, GRU, ConvLSTM derive from keras's RNN
# like catalog.PASS_THROUGH: shape-only or noise layers (SpatialDropout*D derive from Dropout)
PASS_THROUGH = frozenset({"Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise",
                          "Identity", "Flatten", "Reshape", "ActivityRegularization"})


@dataclass(frozen=True, eq=False)
class Entry:
    """One measured thing: a Keras layer, or the fused activation of one (``fused``)."""

    unit: Unit  # what the records read (name, type, role, kind, variables, kernel, fans)
    what: Measured  # what the taps read (band, rectifier, unit axis)
    layer: Any  # the Keras layer (for a fused activation: the layer that owns it)
    fused: bool = False  # this entry is ``layer.activation``, called inside ``layer.call``
    split: Entry | None = None  # a weight layer's fused activation entry

    @property
    def name(self) -> str:
        return self.unit.name


def entries(model: Any) -> list[Entry]:
    """Every entry of ``model``'s layer tree, parents first; the model itself is ``""``."""
    out: list[Entry] = []
    _walk(model, "", out, set())
    return out


def _walk(layer: Any, name: str, out: list[Entry], seen: set[int]) -> None:
    # a layer shared by two parents is one entry, under its first path (as named_modules)
    seen.add(id(layer))
    subs = [] if is_a(layer, RECURRENT) else sublayers(layer)
    taken = {id(v) for sub in subs for v in sub.trainable_weights}
    own = tuple(v.value for v in layer.trainable_weights if id(v) not in taken)
    kind, band = _activation_of_layer(layer)
    fn = vars(layer).get("activation")
    fused = (fn is not None and callable(fn) and kind is None and bool(own)
             and _function_name(fn) != "linear" and not is_a(layer, RECURRENT))
    channels_first = getattr(layer, "data_format", None) == "channels_first"
    act = _fused(f"{name}.activation", layer, fn, channels_first) if fused else None
    kernel = _kernel(layer, own)
    role = catalog.role(recurrent=is_a(layer, RECURRENT), norm=is_a(layer, NORMS),
                        activation=kind is not None, container=bool(subs), params=bool(own))
    unit = Unit(name=name, type=type(layer).__name__, role=role, leaf=not subs, activation=kind,
                params=tuple(p for p in own if p.requires_grad),
                # a Keras kernel is (..., in, units): units first, it reads as a torch weight
                weight=None if kernel is None else kernel.detach().movedim(-1, 0),
                fans=_fans(kernel), feeds=bool(own) and role not in ("norm", "activation"),
                pass_through=role == "norm" or is_a(layer, PASS_THROUGH))
    what = Measured(leaf=not subs, activation=kind is not None, band=band,
                    rectifier=kind in catalog.RECTIFIERS, weighted=not subs and bool(own),
                    channels_first=channels_first)
    out.append(Entry(unit, what, layer, split=act))
    if act is not None:
        out.append(act)
    for child in subs:
        if id(child) in seen:  # shared, and reached first through another path
            continue
        child_name = child.name.replace(".", "_")
        _walk(child, f"{name}/{child_name}" if name else child_name, out, seen)


def _fused(name: str, layer: Any, fn: Any, channels_first: bool) -> Entry:
    """The entry of ``layer.activation``, measured inside ``layer.call``."""
    kind = catalog.as_activation(catalog.function_kind(_function_name(fn)))
    unit = Unit(name=name, type=f'activation="{_function_name(fn)}"', leaf=True,
                role="activation" if kind else "other", activation=kind)
    # the units of its output are the layer's own: it reads the layer's data_format
    what = Measured(leaf=True, activation=kind is not None, band=catalog.band(kind),
                    rectifier=kind in catalog.RECTIFIERS, channels_first=channels_first,
                    own_axis=True)
    return Entry(unit, what, layer, fused=True)


def sublayers(layer: Any) -> list[Any]:
    """The layers directly inside ``layer`` (Keras's own tracking; no InputLayer)."""
    flatten: Callable[..., list] | None = getattr(layer, "_flatten_layers", None)
    found = flatten(include_self=False, recursive=False) if flatten is not None else []
    return [c for c in found if type(c).__name__ != "InputLayer"]


def _activation_of_layer(layer: Any) -> tuple[str | None, Band | None]:
    """The kind and band of an activation *layer* (ReLU, LeakyReLU, Activation, ...)."""
    kind: str | None = None
    if is_a(layer, {"ReLU"}):  # Keras's ReLU is also a leaky or a clipped one
        top = getattr(layer, "max_value", None)
        kind = ("leaky_relu" if getattr(layer, "negative_slope", 0.0)
                else "relu6" if top == 6 else "relu")
        return kind, catalog.band(kind, high=None if top is None else float(top))
    if is_a(layer, {"Activation"}):
        kind = catalog.function_kind(_function_name(getattr(layer, "activation", None)))
    elif is_a(layer, {type(layer).__name__}):  # Keras's LeakyReLU, PReLU, ELU: torch's names
        kind = catalog.class_kind(type(layer).__name__)
    kind = catalog.as_activation(kind)
    return kind, catalog.band(kind)


def _kernel(layer: Any, own: tuple) -> torch.Tensor | None:
    """The layer's own kernel variable (Dense, Conv*, EinsumDense), if it has one."""
    kernel = getattr(getattr(layer, "_kernel", None), "value", None)
    if kernel is None:
        kernel = getattr(getattr(layer, "kernel", None), "value", None)
    if isinstance(kernel, torch.Tensor) and kernel.dim() >= 2 and any(kernel is p for p in own):
        return kernel
    return None


def _fans(kernel: torch.Tensor | None) -> tuple[int | None, int | None]:
    """Keras's fans for a (..., in, units) kernel, the convention of its own initializers
    (``he_normal`` draws Var = 2/fan_in with this fan_in)."""
    if kernel is None:
        return None, None
    shape = tuple(kernel.shape)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _function_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def is_a(layer: Any, names: frozenset[str] | set[str]) -> bool:
    """Whether ``layer`` is (a subclass of) a Keras class named in ``names``."""
    return any(c.__name__ in names and c.__module__.startswith("keras")
               for c in type(layer).__mro__)
