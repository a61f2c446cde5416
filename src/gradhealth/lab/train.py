"""A plain, seeded training loop for the lab: mini-batch SGD or Adam, optional clipping.

Nothing clever on purpose: the lab reproduces what the papers did, so the loop must be
the textbook one (shuffle, forward, loss, backward, clip, step). Shuffling uses its own
``torch.Generator`` so two runs with the same seed see the same batches in the same
order, whatever else touched the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["History", "accuracy", "batches", "fit", "make_optimizer"]

#: Called after each optimizer step with (step index from 0, loss tensor, model).
StepHook = Callable[[int, torch.Tensor, nn.Module], None]


@dataclass
class History:
    """Per-step training losses (host floats, copied once at the end) and the step count
    at which the loss first became non-finite (``None`` if it never did)."""

    losses: list[float] = field(default_factory=list)
    first_nonfinite: int | None = None

    @property
    def diverged(self) -> bool:
        return self.first_nonfinite is not None

    def tail_mean(self, fraction: float = 0.1) -> float:
        """Mean of the last ``fraction`` of the losses (inf if any of them is not finite)."""
        n = max(1, int(len(self.losses) * fraction))
        tail = self.losses[-n:]
        return sum(tail) / n if all(math.isfinite(v) for v in tail) else math.inf


def make_optimizer(name: str, params, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    """``"sgd"`` (with optional momentum) or ``"adam"``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {name!r}.")


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Index tensors of one shuffled epoch (the last, smaller batch is kept)."""
    order = torch.randperm(n, generator=generator)
    return order.split(batch_size)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    clip: Callable[[nn.Module], object] | None = None,
    on_step: StepHook | None = None,
    advance: Callable[[int], None] | None = None,
    stop_on_nonfinite: bool = True,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps on ``(x, y)`` (already on the model's
    device), cycling through shuffled epochs. ``clip(model)`` runs between backward and
    step; ``advance(k)`` is told every few steps how many were done (progress bars).
    Losses stay on the device until the end (no host sync per step)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[torch.Tensor] = []
    chunk, reported = max(1, steps // 50), 0
    history = History()
    while len(losses) < steps:
        for idx in batches(x.shape[0], batch_size, gen):
            idx = idx.to(x.device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            if clip is not None:
                clip(model)
            optimizer.step()
            if on_step is not None:
                on_step(len(losses), loss, model)
            losses.append(loss.detach())
            if len(losses) % chunk == 0 or len(losses) == steps:
                if advance is not None:
                    advance(len(losses) - reported)
                    reported = len(losses)
                # One host sync per chunk: stop once training has blown up.
                if stop_on_nonfinite and not torch.isfinite(torch.stack(losses[-chunk:])).all():
                    steps = len(losses)
            if len(losses) >= steps:
                break
    history.losses = torch.stack(losses).float().cpu().tolist() if losses else []
    for i, v in enumerate(history.losses):
        if not math.isfinite(v):
            history.first_nonfinite = i
            break
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Fraction of ``x`` classified as ``y`` (evaluation mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        out = model(x[start:start + batch_size])
        correct += (out.argmax(dim=1) == y[start:start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / max(1, x.shape[0])
