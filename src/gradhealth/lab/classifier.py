"""A plain, seeded classification training loop for benchmarks, the demo and the lab."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.lab.data import Split


@dataclass
class TrainResult:
    accuracy: float  # on the test part
    losses: list[float] = field(default_factory=list)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(dim=-1) == y[i:i + batch]).sum().item()
    model.train(was)
    return correct / max(len(x), 1)


def train_classifier(model: nn.Module, data: Split, *, steps: int, lr: float, batch: int = 64,
                     seed: int = 0, momentum: float = 0.0,
                     optimizer: torch.optim.Optimizer | None = None,
                     after_backward: Callable[[], None] | None = None,
                     log_loss: Callable[[torch.Tensor], None] | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """``steps`` SGD steps on shuffled mini-batches; returns test accuracy and losses.

    ``after_backward`` runs between backward and the optimizer step (a clipper, say);
    ``log_loss(loss_tensor)`` after backward (``Watch.log_loss``, no host sync);
    ``on_step(step, loss)`` after each step (a progress bar, say).
    """
    g = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    losses = []
    order = torch.randperm(len(data.x_train), generator=g)
    pos = 0
    for step in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(data.x_train), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        loss.backward()
        if log_loss is not None:
            log_loss(loss)
        if after_backward is not None:
            after_backward()
        opt.step()
        value = loss.item()
        losses.append(value)
        if on_step is not None:
            on_step(step, value)
    return TrainResult(accuracy(model, data.x_test, data.y_test), losses)
