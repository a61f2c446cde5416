"""Turn the tapped calls of one pass into per-module ``LayerStats`` (one host copy)."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from gradhealth import catalog, stats
from gradhealth.fetch import Fetch
from gradhealth.findings import LayerStats
from gradhealth.taps import Call


def _sum(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    return torch.stack(present).sum(dim=0) if len(present) > 1 else present[0]


def _dead_fraction(calls: list[Call]) -> torch.Tensor | None:
    fractions = [1.0 - c.alive.float().mean() for c in calls if c.alive is not None]
    return torch.stack(fractions).max() if fractions else None


def _weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        return weight
    return None


def _inputs_from(calls: list[Call]) -> dict[int, tuple[str, ...]]:
    """Index of each call -> names of the modules whose outputs it consumed."""
    producer: dict[int, str] = {}
    consumed: dict[int, tuple[str, ...]] = {}
    for call in calls:  # completion order: children before parents
        consumed[call.index] = tuple(
            dict.fromkeys(producer[i] for i in call.input_ids if i in producer))
        if call.output_ref is not None:
            producer.setdefault(id(call.output_ref), call.name)
    return consumed


def _activation_after(calls: list[Call]) -> dict[str, str]:
    """Each parameterised leaf -> the activation module that next follows it in forward order."""
    leaves = [c for c in calls if c.leaf]
    after: dict[str, str] = {}
    for i, call in enumerate(leaves):
        if not any(True for _ in call.module.parameters(recurse=False)) or catalog.is_norm(call.module):
            continue
        for nxt in leaves[i + 1:]:
            if catalog.activation_kind(nxt.module) is not None:
                after.setdefault(call.name, nxt.name)
                break
            if not catalog.is_pass_through(nxt.module):
                break
    return after


def build_layers(model: nn.Module, calls: list[Call], grad_of: dict[int, torch.Tensor | None],
                 fetch: Fetch) -> dict[str, LayerStats]:
    by_name: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_name[call.name].append(call)
    consumed = _inputs_from(calls)
    after = _activation_after(calls)

    slots: dict[str, dict[str, int | None]] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        module_calls = by_name.get(name, [])
        grads = [grad_of.get(id(p)) for p in own]
        present = [g for g in grads if g is not None]
        weight = _weight(module)
        s = {
            "out": fetch.add(_sum([c.out for c in module_calls])),
            "grad": fetch.add(_sum([c.grad for c in module_calls])),
            "sat": fetch.add(_sum([c.saturated for c in module_calls])),
            "dead": fetch.add(_dead_fraction(module_calls)),
            "nf_out": fetch.add(_sum([c.out_nonfinite for c in module_calls])),
            "nf_in": fetch.add(_sum([c.in_nonfinite for c in module_calls])),
            "time": fetch.add(next((c.input_grad_time for c in module_calls
                                    if c.input_grad_time is not None), None)),
            "out_q": fetch.add(next((c.out_q for c in module_calls if c.out_q is not None), None)),
            "grad_q": fetch.add(next((c.grad_q for c in module_calls
                                      if c.grad_q is not None), None)),
            "w_norm": fetch.add(stats.param_norms(own).norm() if own else None),
            "g_norm": fetch.add(stats.param_norms(present).norm() if present else None),
            "nf_wgrad": fetch.add(torch.stack([(~torch.isfinite(g)).sum(dtype=torch.float32)
                                               for g in present]).sum() if present else None),
            "fan_var": fetch.add(stats.fan_in_variance(weight) if weight is not None else None),
        }
        if module_calls or own:
            slots[name] = s
    fetch.resolve()

    order_of = {name: cs[0].index for name, cs in by_name.items()}
    unseen = len(calls)
    layers: dict[str, LayerStats] = {}
    for name, module in model.named_modules():
        if name not in slots:
            continue
        s = slots[name]
        module_calls = by_name.get(name, [])
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        out = fetch.get(s["out"])
        mean, std, rms = stats.moments_from_sums(out) if out else (None, None, None)
        grad = fetch.get(s["grad"])
        grad_rms = stats.moments_from_sums(grad)[2] if grad else None
        grad_norm = grad[stats.SUMSQ] ** 0.5 if grad else None
        w_norm, g_norm = fetch.scalar(s["w_norm"]), fetch.scalar(s["g_norm"])
        sat = fetch.scalar(s["sat"])
        total = (out[stats.N] + out[stats.NONFINITE]) if out else 0.0
        weight = _weight(module)
        fan_in = fan_out = None
        if weight is not None:
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
        time = fetch.get(s["time"])
        first = module_calls[0] if module_calls else None
        layers[name] = LayerStats(
            name=name, type=type(module).__name__,
            order=order_of.get(name, unseen), calls=len(module_calls),
            leaf=not any(True for _ in module.children()),
            n_params=sum(p.numel() for p in own),
            out_mean=mean, out_std=std, out_rms=rms, grad_rms=grad_rms, grad_norm=grad_norm,
            weight_norm=w_norm, weight_grad_norm=g_norm,
            grad_to_weight=(g_norm / w_norm) if (g_norm is not None and w_norm) else None,
            fan_in=fan_in, fan_out=fan_out, weight_var_fan_in=fetch.scalar(s["fan_var"]),
            saturation=(sat / total) if (sat is not None and total) else None,
            dead_fraction=fetch.scalar(s["dead"]),
            nonfinite_in=int(fetch.scalar(s["nf_in"]) or 0),
            nonfinite_out=int(fetch.scalar(s["nf_out"]) or 0),
            nonfinite_grad=int(grad[stats.NONFINITE]) if grad else 0,
            nonfinite_weight_grad=int(fetch.scalar(s["nf_wgrad"]) or 0),
            activation=catalog.activation_kind(module),
            activation_after=after.get(name),
            inputs_from=consumed.get(first.index, ()) if first else (),
            time_grad_rms=tuple(time) if time else None,
            out_quantiles=_tuple(fetch.get(s["out_q"])),
            grad_quantiles=_tuple(fetch.get(s["grad_q"])),
            role=_role(module),
            error=next((c.error for c in module_calls if c.error), None),
        )
    return layers


def _tuple(values: list[float] | None) -> tuple[float, ...] | None:
    return tuple(values) if values else None


def _role(module: nn.Module) -> str:
    if isinstance(module, catalog.RECURRENT):
        return "recurrent"
    if catalog.is_norm(module):
        return "norm"
    if catalog.activation_kind(module) is not None:
        return "activation"
    if any(True for _ in module.children()):
        return "container"
    if any(True for _ in module.parameters(recurse=False)):
        return "layer"
    return "other"
