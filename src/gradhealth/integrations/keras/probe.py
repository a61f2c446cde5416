"""``keras_probe``: ``gh.probe`` for a Keras 3 model on the torch backend.

One forward pass in training mode (``model(x, training=True)``, as in the first step of
``fit``), one backward pass with ``torch.autograd.grad`` (``.grad`` is never written),
per-layer numbers from ``KerasTaps`` assembled as ``gh.probe`` assembles its own, the
rules, remedies in Keras terms. Afterwards the model is as it was (``KerasState``: its
variables, layer flags and losses, torch's RNG), with no hook or wrapper left, also when
the model raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradhealth._probe import assemble, differentiable
from gradhealth.errors import (
    ConfigError,
    DisconnectedLossError,
    ForwardError,
    InputMismatchError,
    LossNotScalarError,
    NoTrainableParametersError,
    UnsupportedModelError,
    describe,
)
from gradhealth.integrations.keras.backend import keras_on_torch
from gradhealth.integrations.keras.catalog import entries as catalog_entries
from gradhealth.integrations.keras.remedies import keras_finding
from gradhealth.integrations.keras.state import KerasState
from gradhealth.integrations.keras.taps import KerasTaps
from gradhealth.measure.failure import is_rejection
from gradhealth.report.report import Report
from gradhealth.rules import run_rules

KerasLoss = Any  # a loss name ("mse"), a keras.losses.Loss, or a callable (y_true, y_pred)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Keras's error messages come with terminal bold


def keras_probe(model: Any, x: Any, y: Any = None, *, loss: KerasLoss = None) -> Report:
    """Measure one training forward+backward pass of a Keras ``model`` on ``(x, y)`` and
    diagnose its gradient health; findings name Keras layers and speak Keras.

    ``x`` and ``y`` are what ``model.fit`` takes for one batch (NumPy arrays or torch
    tensors; a list or dict for several inputs). The loss is ``loss`` if given (a name
    such as ``"sparse_categorical_crossentropy"``, a ``keras.losses.Loss``, or a callable
    ``(y_true, y_pred)``), else the one given to ``model.compile``; the model's own losses
    (regularizers, ``add_loss``) are added, as ``fit`` does. The model is left as it was.
    """
    keras = keras_on_torch("gradhealth's Keras probe")
    params = _trainable(model)
    entries = catalog_entries(model)
    loss_fn = _loss(keras, model, loss)
    device = params[0].device
    inputs = keras.tree.map_structure(lambda v: _tensor(keras, v, device), x)
    targets = keras.tree.map_structure(lambda v: _tensor(keras, v, device), y)
    leaves: list[torch.Tensor] = []
    inputs = keras.tree.map_structure(lambda v: differentiable(v, leaves), inputs)

    state = KerasState.capture(model, [e.layer for e in entries if not e.fused])
    taps = KerasTaps(entries)
    try:
        with taps:
            try:
                output = model(inputs, training=True)
            except Exception as err:
                raise _rejected(err, taps.failing_module, inputs) from err
        value = _total_loss(keras, loss_fn, targets, output, model)
        grads = torch.autograd.grad(value, params + leaves, allow_unused=True)
        layers, meta = assemble(model, [e.unit for e in entries], taps.calls, params,
                                grads[: len(params)], grads[len(params):], value,
                                taps.batch_size, framework="keras")
    finally:
        taps.remove()
        taps.release()
        state.restore()
    findings = [keras_finding(f) for f in run_rules(layers, meta)]
    return Report(layers=layers, findings=findings, meta=meta)


def _trainable(model: Any) -> list[torch.Tensor]:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "trainable_weights"):
        hint = ("; for a PyTorch module use gradhealth.probe" if isinstance(model, torch.nn.Module)
                else "; set KERAS_BACKEND=torch before the first `import keras`")
        raise UnsupportedModelError(
            f"expected a Keras 3 model on the torch backend, got {describe(model)}{hint}")
    if not model.built:
        raise UnsupportedModelError(
            f"expected a built Keras model, got {type(model).__name__} {model.name!r} with no "
            f"weights yet; start it with keras.Input(shape=...), call model.build(input_shape),"
            f" or call it once on a batch, then probe")
    keras_model: Any = model  # a Keras model: its Keras attributes are not nn.Module's
    params = [v.value for v in keras_model.trainable_weights]
    if not params:
        raise NoTrainableParametersError(
            f"expected a model with trainable weights, got {type(model).__name__} "
            f"{model.name!r} with none (layer.trainable = False everywhere?); unfreeze the "
            f"layers to diagnose: a frozen model has no gradient")
    return params


def _loss(keras: Any, model: Any, loss: KerasLoss) -> Callable[[Any, Any], Any]:
    chosen = loss if loss is not None else getattr(model, "loss", None)
    if chosen is None:
        raise ConfigError(
            f"expected a loss: {type(model).__name__} {model.name!r} is not compiled with "
            f"one; pass loss= (e.g. keras_probe(model, x, y, "
            f"loss=\"sparse_categorical_crossentropy\")) or model.compile(loss=...) first")
    if isinstance(chosen, (dict, list, tuple)):
        raise ConfigError(
            f"expected one loss for the model's output, got {describe(chosen)} (one per "
            f"output); pass loss= a callable (y_true, y_pred) that returns the total")
    return keras.losses.get(chosen) if isinstance(chosen, str) else chosen


def _total_loss(keras: Any, loss_fn: Callable, targets: Any, output: Any, model: Any):
    value = loss_fn(targets, output)
    if not isinstance(value, torch.Tensor):
        raise LossNotScalarError(
            f"expected the loss to return a torch tensor, got {describe(value)}; use "
            f"keras.ops in a custom loss")
    if value.dim() > 0:  # a loss function's per-sample values: compile's default reduction
        value = value.mean()
    extra = list(model.losses)
    if extra:
        value = value + torch.stack([keras.ops.convert_to_tensor(v, dtype=value.dtype)
                                     for v in extra]).sum()
    if not value.requires_grad:
        raise DisconnectedLossError(
            "expected a loss that depends on the model's trainable weights, got one with "
            "requires_grad=False; return the loss from keras.ops on y_pred without "
            "stopping its gradient")
    return value


def _tensor(keras: Any, value: Any, device: torch.device) -> Any:
    """A NumPy array or torch tensor as a torch tensor on ``device`` (floats in floatx,
    as Keras's data adapters do for ``fit``); anything else unchanged."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(keras.config.floatx())
        if not array.flags.writeable:  # np.frombuffer, a memory map: fit copies it too,
            array = array.copy()        # and torch would warn that it cannot write it
        return torch.as_tensor(array, device=device)
    return value


def _rejected(err: Exception, layer: str | None, inputs: Any) -> Exception:
    where = f"Keras layer {layer!r}" if layer else "the model"
    shown = describe(inputs) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
    text = _ANSI.sub("", str(err)).strip()
    # Keras adds "Arguments received by ...: x=Tensor(shape=...)" to any error: not a clue
    if not is_rejection(err, text.split("Arguments received by")[0]):
        return ForwardError(
            f"{where} raised {type(err).__name__}: {text}. This is an error of the model's "
            f"own code, not a shape, dtype or device mismatch: expected a forward that runs "
            f"on this batch; run model(x) on its own to debug it (the original exception "
            f"is chained below)", module=layer or "")
    return InputMismatchError(
        f"{where} rejected the inputs ({shown}): {type(err).__name__}: {text}"
        + ". Expected inputs of the shape and dtype the model was built for; check the "
          "batch you passed (a batch of what you give model.fit usually fits)",
        module=layer or "",
    )
