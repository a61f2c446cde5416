"""``gh.probe``: one forward and one backward pass, per-layer numbers, findings, no trace.

The pass runs in training mode (BatchNorm uses batch statistics, dropout is active, as in
the first step of training). Gradients come from ``torch.autograd.grad``, so ``.grad`` is
never written; buffers (the tensor objects themselves), weights a forward writes, every
module's mode and the RNG state are restored afterwards (``measure.snapshot``); every
hook is removed, also on error. A compiled or DDP-wrapped model is probed as the eager
module it wraps, under its own module names (as ``gh.watch`` names them).

When the pass saw a NaN/Inf, the batch is examined (``measure.batch``) and, for a forward
one, the forward runs a second time recording which operation made it
(``measure.operations``): both only on that failure path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradhealth.errors import (
    ConfigError,
    DisconnectedLossError,
    InputMismatchError,
    NoTrainableParametersError,
    UnsupportedModelError,
    describe,
)
from gradhealth.measure import batch, stats
from gradhealth.measure.backward import BackwardOperations
from gradhealth.measure.failure import forward_failed
from gradhealth.measure.fetch import Fetch
from gradhealth.measure.functional import Functions
from gradhealth.measure.head import random_head, replaceable, zero_head
from gradhealth.measure.layer import LayerStats
from gradhealth.measure.loss import LossFn, compute_loss, loss_name
from gradhealth.measure.operations import Operations
from gradhealth.measure.readiness import require_materialised
from gradhealth.measure.records import Signal, Unit, build_layers
from gradhealth.measure.snapshot import Snapshot
from gradhealth.measure.taps import Call, Taps
from gradhealth.measure.wrappers import eager
from gradhealth.report.report import Report
from gradhealth.rules import run_rules


def probe(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    *,
    loss_fn: LossFn | None = None,
) -> Report:
    """Measure one forward+backward pass of ``model`` and diagnose its gradient health.

    ``inputs`` is a tensor (``model(x)``), a tuple/list (``model(*inputs)``) or a dict
    (``model(**inputs)``). The loss is ``loss_fn(output, targets)`` (``loss_fn(output)``
    when ``targets`` is None) or, by default, cross-entropy for integer targets and mean
    squared error for float targets. The model is left bit-identical.
    """
    model = _eager(model)
    params = _trainable(model)
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn= expects a function of (output, targets), or of (output) "
                          f"without targets, returning the scalar loss; got {describe(loss_fn)}")
    args, kwargs = _as_call(inputs)
    _check_devices(params, args, kwargs)
    input_leaves, args, kwargs = _differentiable_inputs(args, kwargs)

    snapshot = Snapshot.capture(model)
    try:
        layers, meta = _measured_pass(model, snapshot, params, args, kwargs, input_leaves,
                                      targets, loss_fn, fast=True)
        if not _finite(layers, meta) or _nonfinite_batch(args, kwargs):
            # measured again, exactly: counts of NaN/Inf per module, in and out
            snapshot.rewind()
            layers, meta = _measured_pass(model, snapshot, params, args, kwargs, input_leaves,
                                          targets, loss_fn, fast=False)
        blind = zero_head(model, layers) if _finite(layers, meta) else None
        head = replaceable(model, blind[0]) if blind is not None else None
        if blind is not None and head is not None:  # judge the body through a random head
            snapshot.rewind()
            with random_head(head):
                layers, meta = _measured_pass(model, snapshot, params, args, kwargs,
                                              input_leaves, targets, loss_fn, fast=False)
            meta["random_head"] = blind[0]
        elif blind is not None:
            meta["zero_head"] = {"module": blind[0], "layers_below": blind[1]}
        meta.update(_nonfinite_evidence(model, snapshot, layers, meta, inputs, targets))
        if not meta.get("operations") and _backward_only(layers, meta):
            meta["backward_operations"] = _backward_operations(
                model, snapshot, params, inputs, targets, loss_fn)
    finally:
        snapshot.restore()
    meta["loss_name"] = loss_name(targets, loss_fn)
    return Report(layers=layers, findings=run_rules(layers, meta), meta=meta)


def _measured_pass(model: nn.Module, snapshot: Snapshot, params: list[nn.Parameter],
                   args: tuple, kwargs: dict, input_leaves: list[torch.Tensor], targets: Any,
                   loss_fn: LossFn | None, fast: bool) -> tuple[dict[str, LayerStats], dict]:
    """One tapped forward and backward: the layers' numbers and the meta. ``fast``: NaN/Inf
    flagged by the sums rather than counted (``Taps(fast=True)``)."""
    taps = Taps(model, fast=fast)
    try:
        model.train()
        with taps:
            try:
                with snapshot.watching(Functions(taps)):
                    output = model(*args, **kwargs)
            except Exception as err:
                raise forward_failed(err, taps.failing_module, model, _shown(args, kwargs),
                                     "check the batch you passed (a training batch "
                                     "straight from your data loader usually fits)") from err
        loss = compute_loss(output, targets, loss_fn)
        if not loss.requires_grad:
            raise DisconnectedLossError(
                "expected a loss that depends on the model's trainable parameters, got one "
                "with requires_grad=False; do not detach the output or compute the loss "
                "under torch.no_grad()"
            )
        wrt = list(params) + taps.time_leaves + input_leaves
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        return assemble(model, model, taps.calls, params, grads[: len(params)],
                        grads[len(params) + len(taps.time_leaves):], loss,
                        _batch_size(args, kwargs), flags=fast, signals=taps.signals)
    finally:
        taps.remove()
        taps.release()


def _finite(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> bool:
    """No NaN/Inf anywhere in a pass (the loss, every output, every gradient), and no
    float32 norm that overflowed: else the pass is measured again exactly."""
    loss = meta.get("loss")
    return (loss is not None and math.isfinite(loss)
            and all(s.nonfinite_out == 0 and s.nonfinite_grad == 0
                    and s.nonfinite_weight_grad == 0 and not s.norm_overflow
                    for s in layers.values()))


def _nonfinite_batch(args: tuple, kwargs: dict) -> bool:
    """Whether the batch itself holds NaN/Inf (then the pass is measured exactly)."""
    counts = batch.counts(batch.arguments([], args, kwargs))
    return counts is not None and bool(counts.sum() > 0)


def assemble(model: Any, target: nn.Module | Sequence[Unit], calls: list[Call],
             params: Sequence[torch.Tensor], param_grads: Sequence[torch.Tensor | None],
             input_grads: Sequence[torch.Tensor | None], loss: torch.Tensor,
             batch_size: int | None, flags: bool = False, signals: Sequence[Signal] = (),
             **extra: Any) -> tuple[dict[str, LayerStats], dict]:
    """The per-unit ``LayerStats`` of a probed pass (``records.build_layers`` of ``target``:
    a torch module, or another framework's units) and the probe's meta, in one host copy.
    ``flags``: a fast pass (see ``build_layers``). ``signals``: the pass's attention and
    log Z (``Taps.signals``); ``extra``: more meta (the Keras probe's ``framework``)."""
    fetch = Fetch()
    grad_of = {id(p): g for p, g in zip(params, param_grads)}
    input_grad_slots = [fetch.add(stats.moment_sums(g)) for g in input_grads if g is not None]
    loss_slot = fetch.add(loss.detach())
    layers = build_layers(target, calls, grad_of, fetch, flags=flags, signals=signals)
    # Fetch.get answers None only for a None slot, and these slots all hold a tensor's sums
    in_rms = [stats.moments_from_sums(stats.host_sums(sums))[2] for s in input_grad_slots
              if (sums := fetch.get(s)) is not None]
    meta = {
        "loss": fetch.scalar(loss_slot),
        "input_grad_rms": in_rms[0] if in_rms else None,
        "n_params": sum(p.numel() for p in params),
        "model": type(model).__name__,
        "batch_size": batch_size,
        "device": str(params[0].device),
        "dtype": str(params[0].dtype).replace("torch.", ""),
        **extra,
    }
    return layers, meta


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


def _nonfinite_evidence(model: nn.Module, snapshot: Snapshot, layers: dict[str, LayerStats],
                        meta: dict, inputs: Any, targets: Any) -> dict[str, Any]:
    """On a pass that saw NaN/Inf only: the batch's own NaN/Inf and, for a forward one made
    inside the model, the operations that made it (a second forward of the same batch)."""
    found: dict[str, Any] = {}
    root = layers.get("")
    if root is not None and root.nonfinite_in > 0:
        found["nonfinite_inputs"] = batch.nonfinite(batch.named(inputs, "inputs"))
    loss = meta.get("loss")
    if loss is not None and not math.isfinite(loss) and targets is not None:
        found["nonfinite_targets"] = batch.nonfinite(batch.named(targets, "targets"))
    if not found.get("nonfinite_inputs") and any(s.nonfinite_out for s in layers.values()):
        snapshot.rewind()  # the same weights, buffers and random draws as the first pass
        args, kwargs = _as_call(inputs)
        model.train()
        ops = Operations(model)
        try:
            with torch.no_grad(), snapshot.watching(), ops:
                model(*args, **kwargs)
        except Exception:  # naming the operation is a bonus: never fail the probe for it
            pass
        found["operations"] = ops.found
    return found


def _backward_only(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> bool:
    """A finite forward and loss, and a non-finite gradient somewhere."""
    loss = meta.get("loss")
    return (loss is not None and math.isfinite(loss)
            and all(s.nonfinite_out == 0 for s in layers.values())
            and any(s.nonfinite_grad or s.nonfinite_weight_grad for s in layers.values()))


def _backward_operations(model: nn.Module, snapshot: Snapshot, params: list[nn.Parameter],
                         inputs: Any, targets: Any, loss_fn: LossFn | None) -> list[dict]:
    """The nodes of the forward that made the backward's first NaN/Inf (a second forward
    and backward of the same batch, ``measure.backward``): a failure path only."""
    snapshot.rewind()
    args, kwargs = _as_call(inputs)
    args, kwargs = _differentiable_inputs(args, kwargs)[1:]
    model.train()
    ops = BackwardOperations(model)
    try:
        with snapshot.watching(), ops:
            loss = compute_loss(model(*args, **kwargs), targets, loss_fn)
            torch.autograd.grad(loss, params, allow_unused=True)
    except Exception:  # naming the operation is a bonus: never fail the probe for it
        pass
    finally:
        ops.remove()
    return ops.found


def _eager(model: Any) -> nn.Module:
    """The eager module under DDP and ``torch.compile`` wrappers, ready to be measured."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected a torch.nn.Module, got {describe(model)}; pass the model object "
            f"itself"
        )
    model = eager(model)[0]
    require_materialised(model, "gh.probe")
    return model


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        total = sum(1 for _ in model.parameters())
        raise NoTrainableParametersError(
            f"expected a model with trainable parameters, got {type(model).__name__} with "
            f"{total} parameters of which none has requires_grad=True; unfreeze the layers "
            f"to diagnose (model.requires_grad_(True)): a frozen model has no gradient"
        )
    return params


def _as_call(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _check_devices(params, args, kwargs) -> None:
    device = params[0].device
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.device != device:
            raise InputMismatchError(
                f"expected inputs on the model's device {device}, got a tensor on "
                f"{value.device}; move it with .to({str(device)!r})"
            )


def _differentiable_inputs(args: tuple, kwargs: dict[str, Any],
                           ) -> tuple[list[torch.Tensor], tuple, dict[str, Any]]:
    """Replace top-level float input tensors by differentiable aliases to measure dL/dx."""
    leaves: list[torch.Tensor] = []
    new_args = tuple(differentiable(a, leaves) for a in args)
    new_kwargs = {k: differentiable(v, leaves) for k, v in kwargs.items()}
    return leaves, new_args, new_kwargs


def differentiable(value: Any, leaves: list[torch.Tensor]) -> Any:
    """A float input tensor replaced by a differentiable alias, appended to ``leaves``.

    The alias is a new tensor object (``detach()`` shares storage, never copies, and never
    changes the caller's tensor); anything else is returned unchanged.
    """
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
        alias = value.detach().requires_grad_(True)
        leaves.append(alias)
        return alias
    return value


def _shown(args: tuple, kwargs: dict) -> str:
    return ", ".join(describe(a) for a in list(args) + list(kwargs.values()))
