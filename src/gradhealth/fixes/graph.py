"""Which activation follows each Linear / Conv layer, and how we know.

Initialisation gains (He et al. 2015, sec. 2.2; ``torch.nn.init.calculate_gain``), the
activation swap and BatchNorm insertion all need to know what nonlinearity a layer's
output feeds. ``following_activations`` answers that in two ways:

``"fx"``
    ``torch.fx.symbolic_trace`` gives the data flow. Module activations (``nn.ReLU``)
    and functional ones (``F.relu``, ``torch.tanh``, ``x.sigmoid()``) are both seen.
``"forward-order"``
    When tracing fails (data-dependent control flow), one forward pass on example
    inputs records the order in which leaf modules and torch functions run (forward
    hooks plus a ``TorchFunctionMode``). This is time order, not data flow: a
    heuristic. Hooks are removed and the model's buffers, RNG state and mode restored.
``"unknown"``
    Neither worked (no example inputs, or the layer never ran). ``kind`` is then a
    guess from module registration order, and callers should say so.

Shape-neutral modules and functions (norms, dropout, Identity, Flatten: ``catalog.NEUTRAL``
and ``catalog.NEUTRAL_FUNCTIONS``), pooling (commutes with monotone activations) and
residual additions are skipped over when looking for the activation. What counts as a
nonlinearity, and of which kind, is ``gradhealth.measure.catalog``'s answer, the same the
probe gives.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradhealth.fixes.forward import call_checked, preserved_state
from gradhealth.measure import catalog

__all__ = ["FollowingActivation", "activation_kind", "following_activations", "is_layer"]


@dataclass(frozen=True)
class FollowingActivation:
    """The nonlinearity that a layer's output feeds.

    ``kind``: a ``catalog.KINDS`` kind (``"relu"``, ``"relu6"``, ``"leaky_relu"``,
    ``"tanh"``, ``"hardsigmoid"``, ``"softmax"``, ...) or ``"linear"`` when none follows
    (e.g. the output layer). ``slope`` is the negative slope for
    leaky_relu, the current mean slope for prelu and the evaluation slope (l+u)/2 for
    rrelu (Xu et al. 2015, sec. 2). ``module`` is the activation module's qualified
    name (``None`` when functional or absent); ``passed`` the modules skipped over
    between layer and activation; ``how`` is ``"fx"``, ``"forward-order"`` or ``"unknown"``.
    ``at_output`` is True when the activation's result is what the model returns (an
    output nonlinearity such as a final sigmoid, which a swap must not touch).
    """

    layer: str
    kind: str
    how: str
    slope: float | None = None
    module: str | None = None
    functional: bool = False
    passed: tuple[str, ...] = ()
    at_output: bool = False


def is_layer(module: nn.Module) -> bool:
    """Linear, ConvNd, ConvTransposeNd or a transposed linear layer (Hugging Face's
    Conv1D: ``catalog.is_weight_layer``)."""
    return catalog.is_weight_layer(module)


def activation_kind(module: nn.Module) -> tuple[str, float | None] | None:
    """``(kind, slope)`` of a nonlinearity module (``catalog.module_kind``: softmax
    included), or ``None`` if it is not one."""
    kind = catalog.module_kind(module)
    return None if kind is None else (kind, catalog.slope(module))


def following_activations(
    model: nn.Module, example_inputs: Any = None
) -> dict[str, FollowingActivation]:
    """For every Linear/Conv layer (qualified name), the activation that follows it.

    Tries ``torch.fx`` first; if tracing fails and ``example_inputs`` is given, records
    forward execution order on one batch (model state left untouched); otherwise
    returns registration-order guesses marked ``how="unknown"``.
    """
    if is_layer(model):
        return {"": FollowingActivation("", "linear", "unknown")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # tracing fails in many user-code-specific ways; fall back
        graph = None
    if graph is not None:
        found = _from_fx(model, graph)
    elif example_inputs is not None:
        found = _from_events(model, _record_events(model, example_inputs), "forward-order")
    else:
        events = [("module", n, m) for n, m in model.named_modules() if n and _is_leaf(m)]
        found = _from_events(model, events, "unknown")
    for name, module in model.named_modules():
        if is_layer(module) and name not in found:
            found[name] = FollowingActivation(name, "linear", "unknown")
    return found


def _is_leaf(module: nn.Module) -> bool:
    return (is_layer(module) or isinstance(module, catalog.NEUTRAL)
            or catalog.module_kind(module) is not None)


def _from_fx(model: nn.Module, graph: torch.fx.Graph) -> dict[str, FollowingActivation]:
    modules = dict(model.named_modules())
    found: dict[str, FollowingActivation] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not is_layer(modules[node.target]):
            continue
        if node.target in found:  # a shared layer: the first call decides
            continue
        passed: list[str] = []
        current = node
        result = FollowingActivation(node.target, "linear", "fx")
        while len(current.users) == 1:
            (current,) = current.users
            if current.op == "call_module":
                target = modules[current.target]
                kind = activation_kind(target)
                if kind is not None:
                    result = FollowingActivation(
                        node.target, kind[0], "fx", kind[1], current.target, False,
                        tuple(passed), any(u.op == "output" for u in current.users),
                    )
                    break
                if not isinstance(target, catalog.NEUTRAL):
                    break
                passed.append(current.target)
            elif current.op in ("call_function", "call_method"):
                name = current.target if current.op == "call_method" else _name(current.target)
                fkind = catalog.function_kind(name)
                if fkind is not None:
                    slope = _functional_slope(fkind, current.args, current.kwargs, modules)
                    result = FollowingActivation(
                        node.target, fkind, "fx", slope, None, True, tuple(passed),
                        any(u.op == "output" for u in current.users),
                    )
                    break
                if name not in catalog.NEUTRAL_FUNCTIONS:
                    break
            else:
                break
        found[node.target] = result
    return found


def _name(function: Any) -> str:
    if function in (operator.add, operator.iadd):
        return "add"
    return getattr(function, "__name__", "")


def _functional_slope(kind: str, args: tuple, kwargs: dict, modules: dict) -> float | None:
    """Negative slope of a functional leaky_relu / rrelu / prelu call (defaults per F.*)."""
    if kind == "leaky_relu":
        value = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
        return float(value) if isinstance(value, (int, float)) else None
    if kind == "rrelu":
        lower = kwargs.get("lower", args[1] if len(args) > 1 else 1.0 / 8)
        upper = kwargs.get("upper", args[2] if len(args) > 2 else 1.0 / 3)
        ok = isinstance(lower, (int, float)) and isinstance(upper, (int, float))
        return (lower + upper) / 2 if ok else None
    if kind == "prelu":
        weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
        if isinstance(weight, torch.Tensor):
            return float(weight.detach().float().mean())
        if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
            owner, _, attr = str(weight.target).rpartition(".")
            tensor = getattr(modules[owner] if owner else modules[""], attr, None)
            if isinstance(tensor, torch.Tensor):
                return float(tensor.detach().float().mean())
    return None


class _Recorder(TorchFunctionMode):
    """Records torch function calls made outside any hooked leaf module."""

    def __init__(self, events: list, depth: list[int]):
        super().__init__()
        self.events = events
        self.depth = depth

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth[0] == 0:
            self.events.append(("function", _name(func), (args, kwargs)))
        return func(*args, **kwargs)


def _record_events(model: nn.Module, inputs: Any) -> list:
    events: list = []
    depth = [0]
    seen: set[str] = set()
    handles = []

    def pre(name: str, module: nn.Module):
        def hook(mod, args):
            if depth[0] == 0:
                events.append(("module", name, module))
            depth[0] += 1
        return hook

    def post(mod, args, output):
        depth[0] -= 1

    for name, module in model.named_modules():
        if name and _is_leaf(module) and name not in seen:
            seen.add(name)
            handles.append(module.register_forward_pre_hook(pre(name, module)))
            handles.append(module.register_forward_hook(post))
    try:
        with preserved_state(model), _Recorder(events, depth):
            call_checked(model, inputs, "example_inputs")
    finally:
        for handle in handles:
            handle.remove()
    return events


def _is_last(events: list, index: int) -> bool:
    """True when nothing but neutral ops runs after ``events[index]``."""
    return all(e[0] == "function" and e[1] in catalog.NEUTRAL_FUNCTIONS
               for e in events[index + 1:])


def _from_events(model: nn.Module, events: list, how: str) -> dict[str, FollowingActivation]:
    modules = dict(model.named_modules())
    found: dict[str, FollowingActivation] = {}
    for i, (what, name, payload) in enumerate(events):
        if what != "module" or not is_layer(payload) or name in found:
            continue
        result = FollowingActivation(name, "linear", how)
        passed: list[str] = []
        for j in range(i + 1, len(events)):
            what2, name2, payload2 = events[j]
            if what2 == "module":
                kind = activation_kind(payload2)
                if kind is not None:
                    result = FollowingActivation(name, kind[0], how, kind[1], name2, False,
                                                 tuple(passed), _is_last(events, j))
                    break
                if not isinstance(payload2, catalog.NEUTRAL):
                    break
                passed.append(name2)
            elif (fkind := catalog.function_kind(name2)) is not None:
                args, kwargs = payload2
                slope = _functional_slope(fkind, args, kwargs, modules)
                result = FollowingActivation(name, fkind, how, slope, None, True, tuple(passed),
                                             _is_last(events, j))
                break
            elif name2 not in catalog.NEUTRAL_FUNCTIONS:
                break
        if result.kind == "linear" and how == "forward-order":
            # Time order cannot tell "nothing follows" from an op we do not model.
            result = FollowingActivation(name, "linear", "unknown", passed=tuple(passed))
        found[name] = result
    return found

