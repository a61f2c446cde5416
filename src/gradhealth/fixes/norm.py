"""BatchNorm insertion after Linear / Conv layers (Ioffe & Szegedy 2015).

BN normalises each pre-activation over the batch (Ioffe & Szegedy 2015, sec. 3), which
keeps a sigmoid's input distribution stable through training (their sec. 4.1, MNIST)
and lets deep nets train at higher rates (BN-Inception matched the baseline in 14x
fewer steps, sec. 4.2). The paper places BN before the nonlinearity
(``position="before_activation"``); ``"after_activation"`` is the common alternative.

Where the anchor (the layer, or its activation) is a child of a plain ``nn.Sequential``,
the new BatchNorm is inserted into that Sequential; otherwise the anchor is replaced by
``nn.Sequential(anchor, bn)`` under the same name. Both change state_dict keys (a
numbered Sequential renumbers the children after the insertion; a wrapped anchor's keys
gain ``.0``); each ``Change`` lists them. New BN parameters are in no existing optimizer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes.change import Change
from gradhealth.fixes.forward import call, call_checked, preserved_state, require_module
from gradhealth.fixes.graph import following_activations, is_layer
from gradhealth.measure import catalog

__all__ = ["insert_batchnorm_"]

POSITIONS = ("before_activation", "after_activation")
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_WHY = ("Ioffe & Szegedy 2015, sec. 3: normalise each unit over the batch so the "
        "activation's input distribution stays put; create the optimizer after this fix")


def insert_batchnorm_(
    model: nn.Module,
    *,
    position: str = "before_activation",
    names: Iterable[str] | None = None,
    example_inputs: Any = None,
    eps: float = 1e-5,
    momentum: float = 0.1,
) -> list[Change]:
    """Insert BatchNorm1d/2d/3d after Linear/Conv layers, in place.

    Targets: the layers in ``names``, or every layer followed by an activation and not
    already followed by a BatchNorm. The new module takes the layer's device, dtype and
    train/eval mode. Pass ``example_inputs`` to let the fix check shapes: a Linear
    applied to (N, T, F) inputs cannot take BatchNorm1d (it would normalise over T) and
    is refused. Atomic: on ``FixRefusedError`` the model is unchanged; if the model
    fails on ``example_inputs`` after the insertion, the insertion is rolled back.
    """
    require_module(model, "insert_batchnorm_")
    if position not in POSITIONS:
        raise ConfigError(f"Expected position in {POSITIONS}, got {position!r}.")
    modules = dict(model.named_modules())
    if is_layer(model):
        raise FixRefusedError(
            f"Cannot insert BatchNorm after a bare {type(model).__name__}: it has no parent "
            "to hold the new module. Wrap it first: nn.Sequential(layer). Model unchanged.")
    follows = following_activations(model, example_inputs)
    targets = _targets(modules, follows, names)
    if not targets:
        raise FixRefusedError(
            "Expected a Linear/Conv layer followed by an activation and not yet by a "
            "BatchNorm, found none (pass names=[...] to choose layers). Model unchanged.")
    shapes = _output_ndims(model, example_inputs, targets) if example_inputs is not None else {}
    plan: list[tuple[str, str, nn.Module]] = []  # (anchor, layer, bn)
    for name in targets:
        plan.append(_plan_one(name, modules, follows[name], position,
                              shapes.get(name), eps, momentum))
    parents = {anchor.rpartition(".")[0] for anchor, _, _ in plan}
    saved = {p: OrderedDict(modules[p]._modules) for p in parents}
    edits: list[tuple[nn.Module, str, str, list]] = []
    try:
        for anchor, layer, bn in plan:
            keys = _keys(model)
            _insert(modules, anchor, bn)
            edits.append((bn, anchor, layer, _renames(keys, _keys(model))))
        if example_inputs is not None:
            with preserved_state(model):
                call(model, example_inputs)
    except Exception as error:
        for parent, children in saved.items():
            modules[parent]._modules = children
        raise FixRefusedError(
            f"Inserting BatchNorm broke the model ({type(error).__name__}: {error}); the "
            "insertion was rolled back and the model is unchanged.") from error
    names_now = {id(m): n for n, m in model.named_modules()}
    changes = []
    for bn, anchor, layer, renamed in edits:
        moved = "; state_dict keys renamed: " + ", ".join(f"{a} -> {b}" for a, b in renamed)
        changes.append(Change(
            names_now[id(bn)],
            f"inserted {bn!r} after '{anchor}'"
            + (f", before the {follows[layer].kind} of '{layer}'" if anchor == layer
               else f", the {follows[layer].kind} that follows '{layer}'")
            + (moved if renamed else ""), _WHY))
    return changes


def _targets(modules: dict, follows: dict, names: Iterable[str] | None) -> list[str]:
    if names is None:
        return [n for n, f in follows.items()
                if f.kind not in ("linear", "softmax")
                and not any(isinstance(modules[p], nn.modules.batchnorm._BatchNorm)
                            for p in f.passed)]
    names = list(names)
    for n in names:
        if n not in modules or not is_layer(modules[n]):
            valid = [k for k, m in modules.items() if is_layer(m)]
            raise ConfigError(f"Expected names of Linear/Conv layers, got {n!r}. "
                              f"Valid names: {valid[:20]}.")
    return names


def _plan_one(name, modules, follow, position, ndim, eps, momentum):
    layer = modules[name]
    if isinstance(layer, nn.Linear):
        dims, width, expect = 1, layer.out_features, 2
    elif catalog.is_transposed_linear(layer):  # x @ W + b, W stored (in, out)
        dims, width, expect = 1, layer.weight.shape[1], 2
    else:
        dims = layer.weight.ndim - 2
        width, expect = layer.out_channels, dims + 2
    if ndim is not None and ndim != expect:
        hint = (" BatchNorm1d would normalise over dim 1 (time), not the features; use "
                "nn.LayerNorm, or transpose to (N, F, T) around a BatchNorm1d yourself."
                if isinstance(layer, nn.Linear) else "")
        raise FixRefusedError(
            f"Cannot insert {_BN[dims].__name__} after '{name}': expected a {expect}-D "
            f"output (N, C{', ...' if expect > 2 else ''}), the example inputs give "
            f"{ndim}-D.{hint} The model is unchanged.")
    anchor = name
    if position == "after_activation":
        if follow.module is None:
            what = (f"a functional {follow.kind} called inside forward()" if follow.functional
                    else "no activation module")
            raise FixRefusedError(
                f"Cannot insert BatchNorm after the activation of '{name}': it is followed by "
                f"{what} (found by {follow.how}), so there is no module to put it after. Use "
                "position='before_activation', or make the activation a module. "
                "The model is unchanged.")
        reshaping = [p for p in follow.passed
                     if isinstance(modules[p], (nn.Flatten, nn.Unflatten))]
        if reshaping:
            raise FixRefusedError(
                f"Cannot insert BatchNorm after the activation of '{name}': {reshaping} "
                "reshape the output between layer and activation, so the channel count there "
                "is unknown. Use position='before_activation'. The model is unchanged.")
        anchor = follow.module
    weight = layer.weight
    bn = _BN[dims](width, eps=eps, momentum=momentum, device=weight.device, dtype=weight.dtype)
    bn.train(layer.training)
    return anchor, name, bn


def _insert(modules: dict, anchor: str, bn: nn.Module) -> None:
    """Put ``bn`` right after ``modules[anchor]``; found by identity, since an earlier
    insertion into the same numbered Sequential may have renumbered it."""
    parent_name, _, child = anchor.rpartition(".")
    parent, target = modules[parent_name], modules[anchor]
    items = list(parent._modules.items())
    if type(parent) is nn.Sequential:
        at = next(i for i, (_, m) in enumerate(items) if m is target) + 1
        numbered = all(k.isdigit() for k, _ in items)
        key = str(at) if numbered else _unique(f"{items[at - 1][0]}_bn", parent._modules)
        items.insert(at, (key, bn))
        if numbered:
            items = [(str(i), m) for i, (_, m) in enumerate(items)]
        parent._modules = OrderedDict(items)
        return
    key = next(k for k, m in items if m is target)
    setattr(parent, key, nn.Sequential(target, bn))


def _unique(key: str, taken) -> str:
    candidate, i = key, 1
    while candidate in taken:
        i += 1
        candidate = f"{key}{i}"
    return candidate


def _output_ndims(model: nn.Module, inputs: Any, names: list[str]) -> dict[str, int]:
    modules = dict(model.named_modules())
    ndims: dict[str, int] = {}
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            if isinstance(output, torch.Tensor):
                ndims.setdefault(name, output.ndim)
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with preserved_state(model):
            call_checked(model, inputs, "insert_batchnorm_(example_inputs=...)")
    finally:
        for handle in handles:
            handle.remove()
    return ndims


def _keys(model: nn.Module) -> dict[int, str]:
    return {id(t): k for k, t in model.state_dict(keep_vars=True).items()}


def _renames(before: dict[int, str], after: dict[int, str]) -> list[tuple[str, str]]:
    return [(before[i], k) for i, k in after.items() if i in before and before[i] != k]
