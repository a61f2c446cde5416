"""What gradhealth knows about Keras layers: one ``Entry`` per thing the probe measures.

``gradhealth.measure.catalog`` knows torch module types; a Keras model on the torch backend is
made of Keras layers, which ``named_modules()`` does not list (Keras keeps them in Python
lists). ``entries(model)`` walks the layer tree instead and describes each layer the way
the rules expect a module: its role (``layer``, ``norm``, ``activation``, ``recurrent``,
``container``, ``other``), the activation kind, the saturation band, whether units can
die, its own trainable variables and its kernel.

**Fused activations.** ``Dense(64, activation="sigmoid")`` is a weight layer and an
activation in one call. The torch twin is ``nn.Linear`` then ``nn.Sigmoid``, and the rules
read it that way: the depth profile takes dL/d(output) of each *weight layer* (the
pre-activation), saturation reads the *activation's* output, remedies follow
``activation_after`` from the weight layer to its activation. So such a layer is two
entries: ``dense`` (the pre-activation, with the kernel) and ``dense.activation`` (the
activation's output, type ``activation="sigmoid"``), which reads ``dense``. The ``.``
marks the activation as part of its layer; nested layers are named by their path
(``block/dense``), as in ``layer_view``, and a ``.`` in a Keras name becomes ``_``.
A ``linear`` activation (Keras's default) is no activation: one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from gradhealth.measure import catalog
from gradhealth.measure.catalog import Band

# Activation functions (``keras.activations``, by ``__name__``) -> gradhealth's kinds
# (the names ``catalog.activation_kind`` gives their torch modules).
FUNCTION_KINDS = {
    "relu": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu", "elu": "elu",
    "selu": "selu", "celu": "celu", "gelu": "gelu", "silu": "silu", "swish": "silu",
    "mish": "mish", "sigmoid": "sigmoid", "tanh": "tanh", "hard_tanh": "hardtanh",
    "softsign": "softsign", "hard_sigmoid": "hardsigmoid", "hard_silu": "hardswish",
    "hard_swish": "hardswish", "softplus": "softplus",
}
LAYER_KINDS = {"LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu"}
NORMS = frozenset({"BatchNormalization", "LayerNormalization", "GroupNormalization",
                   "RMSNormalization", "UnitNormalization"})
RECURRENT = frozenset({"RNN"})  # SimpleRNN, LSTM, GRU, ConvLSTM derive from keras's RNN
PASS_THROUGH = frozenset({"Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise",
                          "Identity", "Flatten", "Reshape", "ActivityRegularization"})
"""Shape-only or elementwise-noise layers an activation may follow its weight layer
through (SpatialDropout*D derive from Dropout); like ``catalog.PASS_THROUGH``."""
RECTIFIERS = frozenset({"relu", "relu6"})  # as catalog.RECTIFIERS: nn.ReLU, nn.ReLU6


@dataclass(frozen=True, eq=False)
class Entry:
    """One measured thing: a Keras layer, or the fused activation of one (``fused``)."""

    name: str
    layer: Any  # the Keras layer (for a fused activation: the layer that owns it)
    type: str  # the Keras class name, or 'activation="sigmoid"' for a fused activation
    role: str
    leaf: bool
    activation: str | None = None  # gradhealth's activation kind ("relu", "sigmoid", ...)
    band: Band | None = None  # saturated region of a bounded activation's output
    rectifier: bool = False  # units can die (output exactly 0 for every input)
    params: tuple[torch.Tensor, ...] = ()  # own trainable variables (torch Parameters)
    kernel: torch.Tensor | None = None  # Keras layout: (..., fan_in part, units)
    fused: bool = False  # this entry is ``layer.activation``, called inside ``layer.call``
    split: "Entry | None" = None  # a weight layer's fused activation entry

    @property
    def channels_first(self) -> bool:
        return getattr(self.layer, "data_format", None) == "channels_first"


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
    act = None
    if fused:
        fkind = FUNCTION_KINDS.get(_function_name(fn))
        act = Entry(name=f"{name}.activation", layer=layer,
                    type=f'activation="{_function_name(fn)}"',
                    role="activation" if fkind else "other", leaf=True, activation=fkind,
                    band=_band(fkind), rectifier=fkind in RECTIFIERS, fused=True)
    out.append(Entry(name=name, layer=layer, type=type(layer).__name__,
                     role=_role(layer, kind, own, subs), leaf=not subs,
                     activation=kind, band=band, rectifier=kind in RECTIFIERS, params=own,
                     kernel=_kernel(layer, own), split=act))
    if act is not None:
        out.append(act)
    for child in subs:
        if id(child) in seen:  # shared, and reached first through another path
            continue
        child_name = child.name.replace(".", "_")
        _walk(child, f"{name}/{child_name}" if name else child_name, out, seen)


def sublayers(layer: Any) -> list[Any]:
    """The layers directly inside ``layer`` (Keras's own tracking; no InputLayer)."""
    flatten: Callable[..., list] | None = getattr(layer, "_flatten_layers", None)
    found = flatten(include_self=False, recursive=False) if flatten is not None else []
    return [c for c in found if type(c).__name__ != "InputLayer"]


def _role(layer: Any, kind: str | None, own: tuple, children: list) -> str:
    if is_a(layer, RECURRENT):
        return "recurrent"
    if is_a(layer, NORMS):
        return "norm"
    if kind is not None:
        return "activation"
    if children:
        return "container"
    return "layer" if own else "other"


def _activation_of_layer(layer: Any) -> tuple[str | None, Band | None]:
    """The kind and band of an activation *layer* (ReLU, LeakyReLU, Activation, ...)."""
    cls = type(layer).__name__
    if is_a(layer, {"ReLU"}):
        if getattr(layer, "negative_slope", 0.0):
            return "leaky_relu", None
        top = getattr(layer, "max_value", None)
        if top is None:
            return "relu", None
        return ("relu6" if top == 6 else "relu"), Band(None, float(top))
    if cls in LAYER_KINDS and is_a(layer, {cls}):
        return LAYER_KINDS[cls], None
    if is_a(layer, {"Activation"}):
        kind = FUNCTION_KINDS.get(_function_name(getattr(layer, "activation", None)))
        return kind, _band(kind)
    return None, None


def _band(kind: str | None) -> Band | None:
    """The saturation bands of ``gradhealth.measure.catalog`` (Glorot & Bengio 2010), by kind."""
    if kind == "sigmoid":
        return Band(catalog.SIGMOID_SATURATION_LOW, catalog.SIGMOID_SATURATION_HIGH)
    if kind == "tanh":
        return Band(-catalog.TANH_SATURATION, catalog.TANH_SATURATION)
    if kind == "softsign":
        return Band(-catalog.SOFTSIGN_SATURATION, catalog.SOFTSIGN_SATURATION)
    if kind == "hardsigmoid":
        return Band(0.0, 1.0)  # exactly flat outside [-3, 3]
    if kind == "hardtanh":
        return Band(-1.0, 1.0)
    if kind == "relu6":
        return Band(None, 6.0)
    return None


def _kernel(layer: Any, own: tuple) -> torch.Tensor | None:
    """The layer's own kernel variable (Dense, Conv*, EinsumDense), if it has one."""
    kernel = getattr(getattr(layer, "_kernel", None), "value", None)
    if kernel is None:
        kernel = getattr(getattr(layer, "kernel", None), "value", None)
    if isinstance(kernel, torch.Tensor) and kernel.dim() >= 2 and any(kernel is p for p in own):
        return kernel
    return None


def _function_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def is_a(layer: Any, names: frozenset[str] | set[str]) -> bool:
    """Whether ``layer`` is (a subclass of) a Keras class named in ``names``."""
    return any(c.__name__ in names and c.__module__.startswith("keras")
               for c in type(layer).__mro__)
