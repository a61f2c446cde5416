"""A zero head: the output layer whose weight is all zero passes no gradient to the body.

torchvision's VisionTransformer (and other models that start from the prior) initialise
the head to zero, so dL/d(features) = W_head^T dL/d(logits) = 0 at step 0 and no layer
below it can be judged. ``zero_head`` finds it in a probed pass; ``random_head`` puts a
random weight in its place for one more pass - a new Parameter swapped into the module,
the original object swapped back after (never written, so a graph the caller built
through it stays valid) - so the probe can judge the body (docs/science.md#a-zero-head).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from gradhealth.measure import catalog
from gradhealth.measure.layer import LayerStats

SEED = 0  # the temporary head's draw: the same report for the same model and batch


def zero_head(model: nn.Module, layers: Mapping[str, LayerStats]) -> tuple[str, int] | None:
    """(the head's name, how many weight layers are below it) when the last weight layer
    that ran holds an all-zero weight (its bias may be anything: dL/d(features) =
    W^T dL/d(logits) = 0 either way), a loss gradient reached it, and every weight layer
    below got exactly zero; None otherwise."""
    weighted = sorted((s for s in layers.values() if s.role == "layer" and s.calls
                       and s.grad_norm is not None), key=lambda s: s.order)
    if len(weighted) < 2:
        return None
    head, body = weighted[-1], weighted[:-1]
    if not head.grad_norm or any(s.grad_norm for s in body):
        return None
    weight = getattr(dict(model.named_modules()).get(head.name), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.is_meta:
        return None
    if bool(weight.detach().any()):
        return None
    return head.name, len(body)


def replaceable(model: nn.Module, name: str) -> nn.Module | None:
    """The head module when its weight is a Parameter of its own, else None."""
    module = dict(model.named_modules()).get(name)
    weight = None if module is None else module._parameters.get("weight")
    if not isinstance(weight, nn.Parameter) or weight.dim() < 2:
        return None
    return module


@contextlib.contextmanager
def random_head(module: nn.Module) -> Iterator[None]:
    """``module.weight`` replaced by N(0, 1/fan_in) (LeCun's scale, the logits of unit
    variance for unit-variance features) for the duration, the original put back after."""
    original = module._parameters["weight"]
    assert original is not None  # replaceable() checked it
    g = torch.Generator().manual_seed(SEED)
    fan_in = (original.shape[0] if catalog.is_transposed_linear(module)
              else original[0].numel())  # Linear: in_features; ConvNd: in/groups * kernel
    draw = torch.randn(tuple(original.shape), generator=g) * fan_in ** -0.5
    module._parameters["weight"] = nn.Parameter(
        draw.to(device=original.device, dtype=original.dtype),
        requires_grad=original.requires_grad)
    try:
        yield
    finally:
        module._parameters["weight"] = original
