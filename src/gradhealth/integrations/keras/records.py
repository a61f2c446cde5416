"""Turn the tapped calls of one Keras pass into per-entry ``LayerStats`` (one host copy).

The Keras counterpart of ``gradhealth.measure.records.LayerPlan``, which reads a torch module's
structure: its own parameters (``parameters(recurse=False)``), its ``weight`` in torch's
(out, in, ...) layout and its torch type (``catalog``). A Keras entry carries those facts
itself (``keras_catalog.Entry``), and a Keras kernel is laid out (..., in, units):
fan_in = prod(shape[:-1]) and fan_out = shape[-1] * receptive field, the convention of
Keras's own initializers (``he_normal`` draws Var = 2/fan_in with this fan_in), so
``stats.fan_in_variance`` is given the kernel with its units axis moved first.

Like ``LayerPlan`` it comes in two halves, for a training step that must not wait: the
constructor queues every number into a ``Fetch`` (device work only); ``finish`` builds
the ``LayerStats`` once the fetch has resolved.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from gradhealth.integrations.keras.catalog import PASS_THROUGH, Entry, is_a
from gradhealth.measure import stats
from gradhealth.measure.fetch import Fetch
from gradhealth.measure.layer import LayerStats
from gradhealth.measure.records import (
    by_name,
    inputs_from,
    numbers,
    queue,
    settle_quantiles,
)
from gradhealth.measure.taps import Call


def build_keras_layers(entries: Sequence[Entry], calls: list[Call],
                       grad_of: dict[int, torch.Tensor | None],
                       fetch: Fetch) -> dict[str, LayerStats]:
    """Per-entry ``LayerStats`` of one tapped pass: queue, copy once, build."""
    plan = KerasPlan(entries, calls, grad_of, fetch)
    fetch.resolve()
    return plan.finish()


class KerasPlan:
    """``build_keras_layers`` in two halves (see the module docstring).

    ``lean`` (sampled training steps) leaves out what the watch measures itself or judges
    over a window: weight norms and per-sample dead fractions.
    """

    def __init__(self, entries: Sequence[Entry], calls: list[Call],
                 grad_of: dict[int, torch.Tensor | None], fetch: Fetch, *, lean: bool = False):
        self.fetch, self.calls = fetch, calls
        self.consumed = inputs_from(calls)  # now: it reads the calls' output references
        self.after = _activation_after(entries, calls)
        self.by_name = by_name(calls)
        settle_quantiles(calls)
        measured = []
        for entry in entries:
            own = [p for p in entry.params if p.requires_grad]
            entry_calls = self.by_name.get(entry.name, [])
            if entry_calls or own:
                measured.append((entry, entry_calls, own))
        # the kernel's units axis first, as stats.fan_in_variance reads a torch weight
        fan_vars = stats.fan_in_variances([None if e.kernel is None else e.kernel.movedim(-1, 0)
                                           for e, *_ in measured])
        self.slots: list[tuple[Entry, list[Call], dict[str, Any]]] = [
            (entry, entry_calls, queue(fetch, entry_calls, own, grad_of, fan_var, lean=lean))
            for (entry, entry_calls, own), fan_var in zip(measured, fan_vars)]

    def finish(self) -> dict[str, LayerStats]:
        """The entries' ``LayerStats`` (after ``fetch.resolve()``)."""
        order_of = {name: cs[0].index for name, cs in self.by_name.items()}
        layers: dict[str, LayerStats] = {}
        for entry, entry_calls, s in self.slots:
            fan_in, fan_out = _fans(entry.kernel)
            first = entry_calls[0] if entry_calls else None
            layers[entry.name] = LayerStats(
                name=entry.name, type=entry.type,
                order=order_of.get(entry.name, len(self.calls)),
                leaf=entry.leaf, n_params=sum(p.numel() for p in entry.params if p.requires_grad),
                fan_in=fan_in, fan_out=fan_out,
                activation=entry.activation,
                activation_after=self.after.get(entry.name),
                inputs_from=self.consumed.get(first.index, ()) if first else (),
                role=entry.role,
                **numbers(self.fetch, entry_calls, s),
            )
        return layers


def _activation_after(entries: Sequence[Entry], calls: list[Call]) -> dict[str, str]:
    """Each weight layer -> the activation entry that next follows it in forward order,
    through pass-through layers and normalisation (as ``records`` does for modules)."""
    entry_of = {e.name: e for e in entries}
    leaves = [(c, entry_of[c.name]) for c in calls if c.leaf and c.name in entry_of]
    after: dict[str, str] = {}
    for i, (call, entry) in enumerate(leaves):
        if not entry.params or entry.role in ("norm", "activation"):
            continue
        for _, nxt in leaves[i + 1:]:
            if nxt.activation is not None:
                after.setdefault(entry.name, nxt.name)
                break
            if not (nxt.role == "norm" or (not nxt.fused and is_a(nxt.layer, PASS_THROUGH))):
                break
    return after


def _fans(kernel: torch.Tensor | None) -> tuple[int | None, int | None]:
    if kernel is None:
        return None, None
    shape = tuple(kernel.shape)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive
