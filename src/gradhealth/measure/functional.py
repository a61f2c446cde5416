"""Functional activations seen during the probe: ``torch.sigmoid``, ``F.relu``, ``F.gelu``,
``torch.softmax``, ... called in a ``forward`` have no module for the taps to hook, so
saturation of a functional sigmoid or dead units of a functional ReLU went unseen.

``Functions`` is the observer of the probe's one ``TorchFunctionMode`` (``measure.writes``,
entered by ``Snapshot.watching``): the mode hands it the calls whose ``__name__`` is in a
small table (the activation functions of ``catalog``), so every other torch call costs a
set look-up, and each of those is measured by ``Taps.record_function`` as a unit of its
own, named after the innermost module running, the kind and its rank among that module's
calls of that kind: ``blocks.0.mlp/gelu#0`` (``sigmoid#1`` in the root's own forward). The
rules judge it like a module of that kind (saturation bands, dead rectifier units). Calls
made by an activation module itself (``nn.ReLU`` calls ``F.relu``) are that module's, not
counted twice. The probe enters it; the watch's training steps never do.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gradhealth.measure import catalog
from gradhealth.measure.taps import Measured, Taps, floating_leaves

NAMES = frozenset(name for name in (
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_",
    "celu", "gelu", "silu", "mish", "softplus", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardtanh", "hardtanh_", "softsign", "hardsigmoid", "hardswish", "softmax")
    if catalog.function_kind(name) is not None)
"""The functions observed, by ``__name__`` (F.relu, torch.relu and Tensor.relu share it)."""


class Functions:
    """Called by the mode after each call named in ``NAMES``; measures it through ``taps``."""

    names = NAMES

    def __init__(self, taps: Taps):
        self.taps = taps
        self._rank: Counter[tuple[str, str]] = Counter()
        self._what: dict[str, Measured] = {}

    def __call__(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        stack = self.taps.stack
        if not stack or stack[-1][1].get("what", _NONE).activation:
            return  # outside the model, or an activation module's own call
        kind = catalog.function_kind(name)
        if kind is None:
            return
        outs = floating_leaves(out)
        if not outs:
            return
        module = stack[-1][0]
        rank = self._rank[(module, kind)]
        self._rank[(module, kind)] += 1
        unit = f"{module}/{kind}#{rank}" if module else f"{kind}#{rank}"
        self.taps.record_function(unit, kind, self._measured(kind),
                                  floating_leaves((args, kwargs)), out)

    def _measured(self, kind: str) -> Measured:
        what = self._what.get(kind)
        if what is None:
            what = self._what[kind] = Measured(
                leaf=True, activation=catalog.as_activation(kind) is not None,
                band=catalog.band(kind), rectifier=kind in catalog.RECTIFIERS)
        return what


_NONE = Measured(leaf=False)
