"""Turn the tapped calls of one Keras pass into per-entry ``LayerStats`` (one host copy).

The Keras counterpart of ``gradhealth.records.LayerPlan``, which reads a torch module's
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
from collections import defaultdict
from typing import Any, Sequence

import torch

from gradhealth import stats
from gradhealth.fetch import Fetch
from gradhealth.findings import LayerStats
from gradhealth.integrations.keras_catalog import PASS_THROUGH, Entry, is_a
from gradhealth.taps import Call


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
        self.consumed = _inputs_from(calls)  # now: it reads the calls' output references
        self.after = _activation_after(entries, calls)
        self.by_name: dict[str, list[Call]] = defaultdict(list)
        for call in calls:
            self.by_name[call.name].append(call)
        self.slots: list[tuple[Entry, list[Call], dict[str, Any]]] = []
        add = fetch.add
        for entry in entries:
            own = [p for p in entry.params if p.requires_grad]
            entry_calls = self.by_name.get(entry.name, [])
            if not (entry_calls or own):
                continue
            present = [g for g in (grad_of.get(id(p)) for p in own) if g is not None]
            kernel = entry.kernel
            s: dict[str, Any] = {
                "out": [add(c.out) for c in entry_calls],
                "grad": [add(c.grad) for c in entry_calls],
                "sat": [add(c.saturated) for c in entry_calls],
                "nf_out": [add(c.out_nonfinite) for c in entry_calls],
                "nf_in": [add(c.in_nonfinite) for c in entry_calls],
                "dead": None if lean else add(_dead_fraction(entry_calls)),
                "out_q": add(next((c.out_q for c in entry_calls if c.out_q is not None), None)),
                "grad_q": add(next((c.grad_q for c in entry_calls if c.grad_q is not None),
                                   None)),
                "w_norm": add(stats.param_norms(own).norm()) if own and not lean else None,
                "g_norm": add(stats.param_norms(present).norm()) if present else None,
                "nf_wgrad": add(torch.stack([(~torch.isfinite(g)).sum(dtype=torch.float32)
                                             for g in present]).sum()) if present else None,
                "fan_var": (add(stats.fan_in_variance(kernel.movedim(-1, 0)))
                            if kernel is not None else None),
            }
            self.slots.append((entry, entry_calls, s))

    def finish(self) -> dict[str, LayerStats]:
        """The entries' ``LayerStats`` (after ``fetch.resolve()``)."""
        fetch = self.fetch
        order_of = {name: cs[0].index for name, cs in self.by_name.items()}
        unseen = len(self.calls)
        layers: dict[str, LayerStats] = {}
        for entry, entry_calls, s in self.slots:
            out = _moments(entry_calls, [fetch.get(i) for i in s["out"]])
            grad = _moments(entry_calls, [fetch.get(i) for i in s["grad"]])
            mean, std, rms = stats.moments_from_sums(out) if out else (None, None, None)
            w_norm, g_norm = fetch.scalar(s["w_norm"]), fetch.scalar(s["g_norm"])
            sat = _total([fetch.scalar(i) for i in s["sat"]])
            n_out = sum(c.out_numel for c in entry_calls)
            lean = any(c.lean for c in entry_calls)
            nf_out = (out[stats.NONFINITE] if lean and out
                      else _total([fetch.scalar(i) for i in s["nf_out"]]))
            fan_in, fan_out = _fans(entry.kernel)
            first = entry_calls[0] if entry_calls else None
            layers[entry.name] = LayerStats(
                name=entry.name, type=entry.type,
                order=order_of.get(entry.name, unseen), calls=len(entry_calls),
                leaf=entry.leaf, n_params=sum(p.numel() for p in entry.params if p.requires_grad),
                out_mean=mean, out_std=std, out_rms=rms,
                grad_rms=stats.moments_from_sums(grad)[2] if grad else None,
                grad_norm=grad[stats.SUMSQ] ** 0.5 if grad else None,
                weight_norm=w_norm, weight_grad_norm=g_norm,
                grad_to_weight=(g_norm / w_norm) if (g_norm is not None and w_norm) else None,
                fan_in=fan_in, fan_out=fan_out, weight_var_fan_in=fetch.scalar(s["fan_var"]),
                saturation=(sat / n_out) if (sat is not None and n_out) else None,
                dead_fraction=fetch.scalar(s["dead"]),
                nonfinite_in=int(_total([fetch.scalar(i) for i in s["nf_in"]]) or 0),
                nonfinite_out=int(nf_out or 0),
                nonfinite_grad=int(grad[stats.NONFINITE]) if grad else 0,
                nonfinite_weight_grad=int(fetch.scalar(s["nf_wgrad"]) or 0),
                activation=entry.activation,
                activation_after=self.after.get(entry.name),
                inputs_from=self.consumed.get(first.index, ()) if first else (),
                out_quantiles=_tuple(fetch.get(s["out_q"])),
                grad_quantiles=_tuple(fetch.get(s["grad_q"])),
                role=entry.role,
                error=next((c.error for c in entry_calls if c.error), None),
            )
        return layers


def _inputs_from(calls: list[Call]) -> dict[int, tuple[str, ...]]:
    """Index of each call -> names of the entries whose outputs it consumed (the first
    producer of a tensor: children complete before their parents)."""
    producer: dict[int, str] = {}
    consumed: dict[int, tuple[str, ...]] = {}
    for call in calls:
        consumed[call.index] = tuple(
            dict.fromkeys(producer[i] for i in call.input_ids if i in producer))
        if call.output_ref is not None:
            producer.setdefault(id(call.output_ref), call.name)
    return consumed


def _activation_after(entries: Sequence[Entry], calls: list[Call]) -> dict[str, str]:
    """Each weight layer -> the activation entry that next follows it in forward order,
    through pass-through layers and normalisation (as ``records`` does for modules)."""
    by_name = {e.name: e for e in entries}
    leaves = [(c, by_name[c.name]) for c in calls if c.leaf and c.name in by_name]
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


def _dead_fraction(calls: list[Call]) -> torch.Tensor | None:
    fractions = [1.0 - c.alive.float().mean() for c in calls if c.alive is not None]
    if not fractions:
        return None
    return torch.stack(fractions).max() if len(fractions) > 1 else fractions[0]


def _moments(calls: list[Call], values: list[list[float] | None]) -> list[float] | None:
    """The calls' ``moment_sums`` (lean ones converted), summed over the calls."""
    total: list[float] | None = None
    for call, v in zip(calls, values):
        if v is None:
            continue
        m = stats.lean_moments(v, call.out_numel) if call.lean else v
        total = list(m) if total is None else [a + b for a, b in zip(total, m)]
    return total


def _total(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _tuple(values: list[float] | None) -> tuple[float, ...] | None:
    return tuple(values) if values else None
