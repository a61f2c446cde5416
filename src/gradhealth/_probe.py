"""``gh.probe``: one forward and one backward pass, per-layer numbers, findings, no trace.

The pass runs in training mode (BatchNorm uses batch statistics, dropout is active, as in
the first step of training). Gradients come from ``torch.autograd.grad``, so ``.grad`` is
never written; BatchNorm buffers, every module's mode and the RNG state are restored
afterwards; every hook is removed, also on error.
"""

from __future__ import annotations

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
from gradhealth.measure import stats
from gradhealth.measure.fetch import Fetch
from gradhealth.measure.layer import LayerStats
from gradhealth.measure.loss import LossFn, compute_loss
from gradhealth.measure.records import Signal, Unit, build_layers
from gradhealth.measure.snapshot import Snapshot
from gradhealth.measure.taps import Call, Taps
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
    params = _trainable(model)
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn= expects a function of (output, targets), or of (output) "
                          f"without targets, returning the scalar loss; got {describe(loss_fn)}")
    args, kwargs = _as_call(inputs)
    _check_devices(params, args, kwargs)
    input_leaves, args, kwargs = _differentiable_inputs(args, kwargs)

    snapshot = Snapshot.capture(model)
    taps = Taps(model)
    try:
        model.train()
        with taps:
            try:
                output = model(*args, **kwargs)
            except Exception as err:
                raise _rejected(err, taps.failing_module, args, kwargs) from err
        loss = compute_loss(output, targets, loss_fn)
        if not loss.requires_grad:
            raise DisconnectedLossError(
                "expected a loss that depends on the model's trainable parameters, got one "
                "with requires_grad=False; do not detach the output or compute the loss "
                "under torch.no_grad()"
            )
        wrt = list(params) + taps.time_leaves + input_leaves
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        layers, meta = assemble(model, model, taps.calls, params, grads[: len(params)],
                                grads[len(params) + len(taps.time_leaves):], loss,
                                _batch_size(args, kwargs), signals=taps.signals)
    finally:
        taps.remove()
        taps.release()
        snapshot.restore()
    return Report(layers=layers, findings=run_rules(layers, meta), meta=meta)


def assemble(model: Any, target: nn.Module | Sequence[Unit], calls: list[Call],
             params: Sequence[torch.Tensor], param_grads: Sequence[torch.Tensor | None],
             input_grads: Sequence[torch.Tensor | None], loss: torch.Tensor,
             batch_size: int | None, signals: Sequence[Signal] = (),
             **extra: Any) -> tuple[dict[str, LayerStats], dict]:
    """The per-unit ``LayerStats`` of a probed pass (``records.build_layers`` of ``target``:
    a torch module, or another framework's units) and the probe's meta, in one host copy.
    ``signals``: the pass's attention and log Z (``Taps.signals``); ``extra``: more meta
    (the Keras probe's ``framework``)."""
    fetch = Fetch()
    grad_of = {id(p): g for p, g in zip(params, param_grads)}
    input_grad_slots = [fetch.add(stats.moment_sums(g)) for g in input_grads if g is not None]
    loss_slot = fetch.add(loss.detach())
    layers = build_layers(target, calls, grad_of, fetch, signals)
    # Fetch.get answers None only for a None slot, and these slots all hold a tensor's sums
    in_rms = [stats.moments_from_sums(sums)[2] for s in input_grad_slots
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


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected a torch.nn.Module, got {describe(model)}; pass the model object "
            f"itself"
        )
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


def _rejected(err: Exception, module_name: str | None, args, kwargs) -> InputMismatchError:
    shown = ", ".join(describe(a) for a in list(args) + list(kwargs.values()))
    where = f"module {module_name!r}" if module_name else "the model"
    module = module_name if module_name is not None else ""
    return InputMismatchError(
        f"{where} rejected the inputs ({shown}): {type(err).__name__}: {err}. Expected "
        f"inputs of the shape and dtype this module takes; check the batch you passed "
        f"(a training batch straight from your data loader usually fits)",
        module=module,
    )
