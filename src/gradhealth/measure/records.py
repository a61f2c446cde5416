"""Turn the tapped calls of one pass into per-unit ``LayerStats`` (one host copy).

A unit is what a ``LayerStats`` describes: a torch module (``Unit.of`` reads its type
from the catalog, its own parameters and its weight), or a Keras layer or fused
activation, whose ``Unit`` the Keras catalog builds from the layer (its kernel moved to
torch's layout, Keras's fans). Everything after that is the same for both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from gradhealth.measure import catalog, stats
from gradhealth.measure.fetch import Fetch
from gradhealth.measure.layer import LayerStats
from gradhealth.measure.pooled import NormRef, pooled_norm, pooled_norms
from gradhealth.measure.taps import Call


def _dead_fraction(calls: list[Call]) -> torch.Tensor | None:
    fractions = [1.0 - c.alive.float().mean() for c in calls if c.alive is not None]
    if not fractions:
        return None
    return torch.stack(fractions).max() if len(fractions) > 1 else fractions[0]


def _weight(module: nn.Module) -> torch.Tensor | None:
    return catalog.weight_as_linear(module)


@dataclass(frozen=True, eq=False)
class Unit:
    """One measured thing as the records see it: a torch module (``Unit.of``), or a Keras
    layer or fused activation (``gradhealth.integrations.keras.catalog``), whose calls are
    the taps' calls of the same ``name``."""

    name: str
    type: str
    role: str  # catalog.role
    leaf: bool
    activation: str | None = None  # catalog.activation_kind
    params: tuple[torch.Tensor, ...] = ()  # its own trainable parameters
    weight: torch.Tensor | None = None  # in torch's (out, in, ...) layout, for fan_in*Var(W)
    fans: tuple[int | None, int | None] = (None, None)  # (fan_in, fan_out) of that weight
    feeds: bool = False  # a parameterised leaf, not a norm: an activation may follow it
    pass_through: bool = False  # an activation may follow its weight layer through it

    @classmethod
    def of(cls, name: str, module: nn.Module) -> Unit:
        weight, kind = _weight(module), catalog.activation_kind(module)
        params = list(module.parameters(recurse=False))
        leaf, norm = not any(True for _ in module.children()), catalog.is_norm(module)
        return cls(name=name, type=type(module).__name__, leaf=leaf, activation=kind,
                   role=catalog.role(recurrent=isinstance(module, catalog.RECURRENT),
                                     norm=norm, activation=kind is not None,
                                     container=not leaf, params=bool(params)),
                   params=tuple(p for p in params if p.requires_grad), weight=weight,
                   fans=(None, None) if weight is None
                   else nn.init._calculate_fan_in_and_fan_out(weight),
                   feeds=bool(params) and not norm,
                   pass_through=norm or isinstance(module, catalog.PASS_THROUGH))

    @classmethod
    def function(cls, name: str, kind: str) -> Unit:
        """A functional call's unit (``measure.functional``): ``blocks.0/relu#0``."""
        activation = catalog.as_activation(kind)
        return cls(name=name, type=f"F.{kind}", leaf=True, activation=activation,
                   role=catalog.role(recurrent=False, norm=False,
                                     activation=activation is not None, container=False,
                                     params=False))


def inputs_from(calls: list[Call]) -> dict[int, tuple[str, ...]]:
    """Index of each call -> names of the modules whose outputs it consumed."""
    producer: dict[int, str] = {}
    consumed: dict[int, tuple[str, ...]] = {}
    for call in calls:  # completion order: children before parents
        consumed[call.index] = tuple(
            dict.fromkeys(producer[i] for i in call.input_ids if i in producer))
        if call.output_ref is not None:
            producer.setdefault(id(call.output_ref), call.name)
    return consumed


def _activation_after(calls: list[Call], unit_of: dict[str, Unit]) -> dict[str, str]:
    """Each weight layer -> the activation that next follows it in forward order, through
    pass-through modules and normalisation."""
    leaves = [unit_of[c.name] for c in calls if c.leaf and c.name in unit_of]
    after: dict[str, str] = {}
    for i, unit in enumerate(leaves):
        if not unit.feeds:
            continue
        for nxt in leaves[i + 1:]:
            if nxt.activation is not None:
                after.setdefault(unit.name, nxt.name)
                break
            if not nxt.pass_through:
                break
    return after


class Signal(Protocol):
    """Numbers of a pass that are not per-call moments (``Taps.signals``: attention
    logits, output log Z; the watch's Adam moments): ``queue`` puts its device tensors
    into the pass's ``Fetch`` and names the modules it will describe; ``fields``, once the
    fetch has resolved, gives their ``LayerStats`` fields by module name."""

    def queue(self, fetch: Fetch, calls: Sequence[Call]) -> set[str] | None: ...

    def fields(self, fetch: Fetch) -> dict[str, dict[str, Any]]: ...


def build_layers(model: nn.Module | Sequence[Unit], calls: list[Call],
                 grad_of: Mapping[int, torch.Tensor | None], fetch: Fetch, *,
                 flags: bool = False, signals: Sequence[Signal] = ()) -> dict[str, LayerStats]:
    """Per-unit ``LayerStats`` of one tapped pass: queue, copy once, build. ``flags``:
    non-finite weight gradients flagged (0/1) rather than counted, as the calls of a fast
    pass (``Taps(fast=True)``) flag theirs. ``signals``: attention, log Z (``Signal``)."""
    plan = LayerPlan(model, calls, grad_of, fetch, flags=flags, signals=signals)
    fetch.resolve()
    return plan.finish()


class LayerPlan:
    """``build_layers`` in two halves, for a training step that must not wait.

    The constructor queues every number of every unit into ``fetch`` (device work only,
    nothing copied); ``finish`` builds the ``LayerStats`` once ``fetch`` has resolved.
    ``model``: a torch module (its units are its ``named_modules``) or the ``Unit`` list
    of another framework's model. ``lean`` (``gh.watch``'s sampled steps) leaves out what
    the watch measures itself or judges over a window: weight norms and per-sample dead
    fractions. ``grad_scale``: a slot of ``fetch`` holding GradScaler's loss scale, by
    which every gradient the taps saw is multiplied (divided out on the host in ``finish``).
    ``signals``: more numbers of the pass, by module (``Signal``).
    """

    def __init__(self, model: nn.Module | Sequence[Unit], calls: list[Call],
                 grad_of: Mapping[int, torch.Tensor | None], fetch: Fetch, *,
                 lean: bool = False, grad_scale: int | None = None, flags: bool = False,
                 signals: Sequence[Signal] = ()):
        self.fetch, self.grad_scale, self.calls = fetch, grad_scale, calls
        self.signals = list(signals)
        named = set().union(*(s.queue(fetch, calls) or set() for s in self.signals))
        units = ([Unit.of(name, m) for name, m in model.named_modules()]
                 if isinstance(model, nn.Module) else list(model))
        functions = {c.name: c.function for c in calls if c.function is not None}
        units += [Unit.function(name, kind) for name, kind in functions.items()]
        self.consumed = inputs_from(calls)  # now: it reads the calls' output references
        self.after = _activation_after(calls, {u.name: u for u in units})
        self.by_name = by_name(calls)
        settle_quantiles(calls)
        measured = [(u, self.by_name.get(u.name, [])) for u in units]
        measured = [(u, unit_calls) for u, unit_calls in measured
                    if unit_calls or u.params or u.name in named]
        fan_vars = stats.fan_in_variances([u.weight for u, _ in measured])
        own = [list(u.params) for u, _ in measured]
        grads = [[g for g in (grad_of.get(id(p)) for p in ps) if g is not None] for ps in own]
        w_refs = pooled_norms(fetch, own) if not lean else [None] * len(own)
        g_refs = pooled_norms(fetch, grads)
        self.slots: list[tuple[Unit, list[Call], dict[str, Any]]] = [
            (unit, unit_calls, queue(fetch, unit_calls, unit.params, grad_of, fan_var, lean=lean,
                                     flags=flags, norms=(w_ref, g_ref)))
            for (unit, unit_calls), fan_var, w_ref, g_ref
            in zip(measured, fan_vars, w_refs, g_refs)]

    def finish(self) -> dict[str, LayerStats]:
        """The units' ``LayerStats`` (after ``fetch.resolve()``)."""
        scale = self.fetch.scalar(self.grad_scale)
        order_of = {name: cs[0].index for name, cs in self.by_name.items()}
        layers: dict[str, LayerStats] = {}
        for unit, unit_calls, s in self.slots:
            first = unit_calls[0] if unit_calls else None
            layers[unit.name] = LayerStats(
                name=unit.name, type=unit.type, order=order_of.get(unit.name, len(self.calls)),
                leaf=unit.leaf, n_params=sum(p.numel() for p in unit.params),
                fan_in=unit.fans[0], fan_out=unit.fans[1], activation=unit.activation,
                activation_after=self.after.get(unit.name),
                inputs_from=self.consumed.get(first.index, ()) if first else (),
                role=unit.role, **numbers(self.fetch, unit_calls, s, scale),
            )
        for signal in self.signals:
            for name, fields in signal.fields(self.fetch).items():
                if name in layers:
                    layers[name] = layers[name].replaced(**fields)
        return layers


def settle_quantiles(calls: list[Call]) -> None:
    """Fill each call's ``out_q``/``grad_q`` from its quantile samples, every sample of the
    pass sorted together (``stats.quantile_rows``), and drop the samples."""
    samples, targets = [], []
    for call in calls:
        for attr, sample in (("out_q", call.out_sample), ("grad_q", call.grad_sample)):
            if sample is not None:
                samples.append(sample)
                targets.append((call, attr))
        call.out_sample = call.grad_sample = None
    for (call, attr), row in zip(targets, stats.quantile_rows(samples)):
        setattr(call, attr, row)


def by_name(calls: list[Call]) -> dict[str, list[Call]]:
    """The calls of each module (or entry), in completion order."""
    grouped: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        grouped[call.name].append(call)
    return grouped


def queue(fetch: Fetch, calls: list[Call], own: Sequence[torch.Tensor],
          grad_of: Mapping[int, torch.Tensor | None], fan_var: torch.Tensor | None, *,
          lean: bool = False, flags: bool = False,
          norms: tuple[NormRef | None, NormRef | None] | None = None) -> dict[str, Any]:
    """Queue one module's numbers into ``fetch``: its calls' statistics, its own trainable
    parameters' norms (and their gradients' from ``grad_of``) and ``fan_var``
    (fan_in * Var(W), computed by the caller, who knows the weight's layout). Returns the
    slots ``numbers`` reads back. ``lean``: no weight norm, no per-sample dead fraction.
    ``flags``: no count of non-finite weight-gradient entries (the norm's flag stands).
    ``norms``: the (weight, gradient) norms already queued by ``pooled_norms``."""
    add = fetch.add
    present = [g for g in (grad_of.get(id(p)) for p in own) if g is not None]
    return {
        "out": [add(c.out) for c in calls],
        "grad": [add(c.grad) for c in calls],
        "sat": [add(c.saturated) for c in calls],
        "nf_out": [add(c.out_nonfinite) for c in calls],
        "nf_in": [add(c.in_nonfinite) for c in calls],
        "dead": None if lean else add(_dead_fraction(calls)),
        "time": add(next((c.input_grad_time for c in calls
                          if c.input_grad_time is not None), None)),
        "in_grad": add(next((c.in_grad for c in calls if c.in_grad is not None), None)),
        "out_q": add(next((c.out_q for c in calls if c.out_q is not None), None)),
        "grad_q": add(next((c.grad_q for c in calls if c.grad_q is not None), None)),
        "w_norm": (norms[0] if norms is not None else
                   add(stats.param_norms(own).norm()) if own and not lean else None),
        "g_norm": (norms[1] if norms is not None else
                   add(stats.param_norms(present).norm()) if present else None),
        "nf_wgrad": add(torch.stack([(~torch.isfinite(g)).sum(dtype=torch.float32)
                                     for g in present]).sum()) if present and not flags
        else None,
        "fan_var": add(fan_var),
        # a weight that already holds NaN/Inf: no operation of the forward made it
        "nf_param": add(torch.stack([(~torch.isfinite(p.detach())).sum(dtype=torch.float32)
                                     for p in own]).sum()) if own and not lean else None,
    }


def numbers(fetch: Fetch, calls: list[Call], s: dict[str, Any],
            scale: float | None = None) -> dict[str, Any]:
    """The measured fields of one module's ``LayerStats`` from ``queue``'s slots (after
    ``fetch.resolve()``); ``scale``: the loss scale to divide out of the gradients."""
    out = _moments(calls, [fetch.get(i) for i in s["out"]])
    grad = _moments(calls, [fetch.get(i) for i in s["grad"]])
    time = fetch.get(s["time"])
    if scale and grad is not None:
        grad = _unscaled(grad, scale)
    if scale and time:
        time = [t / scale for t in time]
    mean, std, rms = stats.moments_from_sums(out) if out else (None, None, None)
    w_norm, g_norm = pooled_norm(fetch, s["w_norm"]), pooled_norm(fetch, s["g_norm"])
    sat = _total([fetch.scalar(i) for i in s["sat"]])
    n_out = sum(c.out_numel for c in calls)
    lean = any(c.lean for c in calls)
    nf_out = (out[stats.NONFINITE] if lean and out
              else _total([fetch.scalar(i) for i in s["nf_out"]]))
    return dict(
        calls=len(calls), out_mean=mean, out_std=std, out_rms=rms,
        grad_rms=stats.moments_from_sums(grad)[2] if grad else None,
        grad_norm=grad[stats.SUMSQ] ** 0.5 if grad and not stats.overflowed(grad) else None,
        norm_overflow=stats.overflowed(out) or stats.overflowed(grad),
        weight_norm=w_norm, weight_grad_norm=g_norm,
        grad_to_weight=(g_norm / w_norm) if (g_norm is not None and w_norm) else None,
        weight_var_fan_in=fetch.scalar(s["fan_var"]),
        saturation=(sat / n_out) if (sat is not None and n_out) else None,
        dead_fraction=fetch.scalar(s["dead"]),
        nonfinite_in=int(_total([fetch.scalar(i) for i in s["nf_in"]]) or 0),
        nonfinite_out=int(nf_out or 0),
        nonfinite_grad=int(grad[stats.NONFINITE]) if grad else 0,
        nonfinite_params=int(fetch.scalar(s.get("nf_param")) or 0),
        nonfinite_weight_grad=(int(fetch.scalar(s["nf_wgrad"]) or 0) if s["nf_wgrad"] is not None
                               else int(g_norm is not None and not math.isfinite(g_norm))),
        time_grad_rms=tuple(time) if time else None,
        input_grad_norm=_norm(fetch.get(s["in_grad"]), any(c.lean for c in calls), scale),
        out_quantiles=_tuple(fetch.get(s["out_q"])),
        grad_quantiles=_tuple(fetch.get(s["grad_q"])),
        error=next((c.error for c in calls if c.error), None),
    )


def _moments(calls: list[Call], values: list[list[float] | None]) -> list[float] | None:
    """The calls' ``moment_sums`` (lean ones converted), summed over the calls."""
    total: list[float] | None = None
    for call, v in zip(calls, values):
        if v is None:
            continue
        m = stats.lean_moments(v, call.out_numel) if call.lean else stats.host_sums(v)
        total = list(m) if total is None else [a + b for a, b in zip(total, m)]
    return total


def _norm(values: list[float] | None, lean: bool, scale: float | None) -> float | None:
    """The L2 norm in ``lean_sums`` (sum, norm) or ``moment_sums`` values."""
    if not values:
        return None
    norm = values[1] if lean else max(values[stats.NORM], 0.0)
    return norm / scale if scale else norm


def _unscaled(grad: list[float], scale: float) -> list[float]:
    """Divide the loss scale out of gradient moments.

    On a step GradScaler let through every gradient is finite, so a non-finite sum or sum
    of squares can only be our own float32 overflow under a huge scale (2**24 and up during
    calibration): it becomes unknown (NaN, flag 0) rather than a false NaN finding.
    """
    total, sumsq = grad[stats.SUM] / scale, grad[stats.SUMSQ] / (scale * scale)
    return [grad[stats.N], total if math.isfinite(total) else math.nan,
            sumsq if math.isfinite(sumsq) else math.nan, 0.0]


def _total(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _tuple(values: list[float] | None) -> tuple[float, ...] | None:
    return tuple(values) if values else None
