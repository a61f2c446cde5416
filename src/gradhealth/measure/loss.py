"""Turn a model's output (and targets) into the scalar loss a probe differentiates.

Defaults follow what a user would train with: cross-entropy for integer class targets,
mean squared error for float targets, or the user's own ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gradhealth.errors import (
    InputMismatchError,
    LossNotScalarError,
    TargetMismatchError,
    describe,
)

LossFn = Callable[..., torch.Tensor]


def primary_output(output: Any) -> torch.Tensor:
    """The tensor a default loss applies to: the output, its first element, or ``logits``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "keys"):
        if "logits" in output.keys():
            return output["logits"]
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
    raise TargetMismatchError(
        f"expected the model to return a tensor (or a tuple/dict holding one) for the "
        f"default loss, got {type(output).__name__}; pass loss_fn=... to compute the loss "
        f"from this output yourself"
    )


def compute_loss(output: Any, targets: Any, loss_fn: LossFn | None) -> torch.Tensor:
    """The scalar loss; raises TargetMismatchError or LossNotScalarError with a fix."""
    if loss_fn is not None:
        loss = loss_fn(output) if targets is None else loss_fn(output, targets)
        where = "loss_fn"
    elif targets is None:
        loss = _self_loss(output)
        where = "the model's output"
    else:
        loss = default_loss(primary_output(output), targets)
        where = "the default loss"
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise LossNotScalarError(
            f"expected {where} to be a scalar tensor, got {describe(loss)}; reduce it "
            f"(e.g. .mean()) or pass a loss_fn that returns a scalar"
        )
    return loss.reshape(())


def returned_loss(output: Any) -> torch.Tensor | None:
    """The loss a model returns itself (Hugging Face style ``output.loss`` / ``["loss"]``)."""
    if isinstance(output, torch.Tensor):
        return None  # a plain output (the common case: checked first, on every forward)
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    return loss if isinstance(loss, torch.Tensor) else None


def _self_loss(output: Any) -> torch.Tensor:
    loss = returned_loss(output)
    if loss is not None:
        return loss
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        return output
    raise LossNotScalarError(
        f"targets=None and no loss_fn: expected the model to return a scalar loss (or an "
        f"output with a .loss), got {describe(output)}; pass targets=... for the default "
        f"loss or loss_fn=lambda out: ... to say how to reduce the output"
    )


def default_loss(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TargetMismatchError(f"expected targets as a tensor, got {describe(targets)}")
    if out.numel() == 0 or targets.numel() == 0:
        raise InputMismatchError(
            f"expected a batch with samples in it, got an empty one (output "
            f"{tuple(out.shape)}, targets {tuple(targets.shape)}); pass at least one sample "
            f"(16 or more, so dead-unit counts mean something)"
        )
    if targets.device != out.device:
        raise TargetMismatchError(
            f"targets are on {targets.device} but the output is on {out.device}; move "
            f"them with targets.to({str(out.device)!r})"
        )
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return _cross_entropy(out, targets.long())
    if targets.is_floating_point() or targets.dtype == torch.bool:
        return _mse(out, targets.to(out.dtype))
    raise TargetMismatchError(f"expected integer or float targets, got {describe(targets)}")


def _cross_entropy(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    def standard(o: torch.Tensor, t: torch.Tensor) -> bool:  # (N, C, ...) with (N, ...)
        return o.dim() == t.dim() + 1 and o.shape[0] == t.shape[0] and o.shape[2:] == t.shape[1:]

    if not standard(out, targets) and out.dim() > 2 and out.shape[:-1] == targets.shape:
        out = out.reshape(-1, out.shape[-1])  # (N, T, C) logits with (N, T) targets
        targets = targets.reshape(-1)
    if not standard(out, targets):
        raise TargetMismatchError(
            f"integer targets mean cross-entropy, which expects logits (N, C, ...) and "
            f"targets (N, ...); got output {tuple(out.shape)} and targets "
            f"{tuple(targets.shape)}; pass float targets for MSE or a loss_fn"
        )
    n_classes = out.shape[1]
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= n_classes:
        raise TargetMismatchError(
            f"class targets must lie in [0, {n_classes - 1}] for an output with "
            f"{n_classes} classes, got values in [{lo}, {hi}]; check the labels or the "
            f"size of the last layer"
        )
    return F.cross_entropy(out.float(), targets)


def _mse(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if out.shape != targets.shape:
        if out.dim() == targets.dim() + 1 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        else:
            raise TargetMismatchError(
                f"float targets mean mean-squared error, which expects targets of the "
                f"output's shape {tuple(out.shape)}, got {tuple(targets.shape)}; pass "
                f"integer class targets for cross-entropy or a loss_fn"
            )
    return F.mse_loss(out.float(), targets.float())


def loss_name(targets: Any, loss_fn: LossFn | None) -> str:
    """Which loss a probe used, in words for its report: the user's ``loss_fn``, the
    model's own, cross-entropy for integer targets or MSE for float ones - and, for float
    targets that look one-hot (rows of 0s and one 1), that cross-entropy was probably
    meant (one-hot float targets silently got MSE, issue 17)."""
    if loss_fn is not None:
        return "loss_fn"
    if targets is None:
        return "the model's own loss"
    if not isinstance(targets, torch.Tensor):
        return "the default loss"
    if not (targets.is_floating_point() or targets.dtype == torch.bool):
        return "cross-entropy (integer targets)"
    name = "MSE (float targets)"
    t = targets.detach()
    if t.dim() >= 2 and t.shape[-1] > 1 and t.numel():
        t = t.float()
        binary = bool(((t == 0) | (t == 1)).all())
        if binary and bool((t.sum(-1) == 1).all()):
            name += ("; they look one-hot: pass class indices (targets.argmax(-1)) for "
                     "cross-entropy")
    return name
