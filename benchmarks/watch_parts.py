"""The parts the scenarios of ``watch_accuracy.py`` are built from: data (the digits,
Fashion-MNIST where installed, synthetic sequences), batches with a bad one where asked,
small models (MLP, CNN, RNN/LSTM, a transformer), schedules, and the two records a
scenario is made of: ``Scenario`` (what to train, what the watch must report and how its
true onset is found) and ``Setup`` (one seed of it, built fresh)."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gradhealth.errors import DataNotFoundError  # noqa: E402
from gradhealth.lab.data import (  # noqa: E402
    load_digits,
    load_fashion_mnist,
    synthetic_temporal_order,
)
from models import GPT, GPTConfig  # noqa: E402

BATCH = 64
Tensor = torch.Tensor


@dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], tuple[Tensor, Tensor]]  # step -> (inputs, targets)
    loss: Callable[[Tensor, Tensor], Tensor]
    data: tuple[Tensor, Tensor]  # what the truth is measured on (the training set)
    lr: Callable[[int], float] | None = None  # step -> learning rate
    amp: bool = False  # fp16 autocast with a GradScaler
    poke: Callable[[int, nn.Module], None] | None = None  # a change made before a step


@dataclass(frozen=True)
class Scenario:
    name: str
    family: str  # mlp, cnn, rnn, transformer
    data: str
    build: Callable[[int], Setup]
    steps: int
    expect: tuple[str, ...] = ()  # () for a healthy run
    allow: tuple[str, ...] = ()
    onset: tuple[str, ...] = ()  # per expected kind, how its true onset is found
    # ("event:<step>", "norm:<step>", "start", "dead", "loss", "nan"; watch_truth.py)
    note: str = ""
    if_nan: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    """(expect, onset) instead, for a seed whose run the truth finds NaN in: units cannot
    be seen dead in NaN activations."""

    def label(self, nan: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(expect, onset) for a run (``nan``: the truth found NaN in it)."""
        return self.if_nan if nan and self.if_nan else (self.expect, self.onset)


# -- data ----------------------------------------------------------------------------------
@cache
def digits() -> tuple[Tensor, Tensor]:
    d = load_digits()
    return d.x_train, d.y_train


@cache
def fashion() -> tuple[Tensor, Tensor]:
    """4000 Fashion-MNIST images where installed; else the digits as 8x8 images."""
    try:
        d = load_fashion_mnist(limit=4000)
        return d.x_train, d.y_train
    except DataNotFoundError:
        x, y = digits()
        return x.reshape(-1, 1, 8, 8), y


@cache
def sequences(n: int = 4096, vocab: int = 16, length: int = 16) -> tuple[Tensor, Tensor]:
    """Token sequences whose target at each position is the token two places back: an
    attention task, at chance ln(16) = 2.77 before training."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randint(0, vocab, (n, length), generator=g)
    return x, torch.roll(x, 2, dims=1)


@cache
def order(n: int = 4096, length: int = 12) -> tuple[Tensor, Tensor]:
    """The temporal-order problem (Hochreiter & Schmidhuber 1997), 12 steps long."""
    return synthetic_temporal_order(n, length, seed=1234)


def batches(data: tuple[Tensor, Tensor], seed: int, replace: bool = False,
            bad: dict[int, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] | None = None
            ) -> Callable[[int], tuple[Tensor, Tensor]]:
    """Batch ``step`` of epochs shuffled by ``seed`` (drawn with replacement if
    ``replace``); ``bad[step]`` changes that one batch."""
    x, y = data
    g = torch.Generator().manual_seed(seed)
    per_epoch = len(x) // BATCH
    order_: list[Tensor] = []

    def batch(step: int) -> tuple[Tensor, Tensor]:
        if replace:
            idx = torch.randint(0, len(x), (BATCH,), generator=g)
        else:
            while len(order_) <= step // per_epoch:
                order_.append(torch.randperm(len(x), generator=g))
            at = (step % per_epoch) * BATCH
            idx = order_[step // per_epoch][at:at + BATCH]
        xb, yb = x[idx], y[idx]
        return bad[step](xb, yb) if bad and step in bad else (xb, yb)
    return batch


# -- models --------------------------------------------------------------------------------
def mlp(d_in: int = 64, depth: int = 6, width: int = 128, act: type[nn.Module] = nn.ReLU,
        init: str = "he", classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    d = d_in
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if init == "he":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        elif init == "glorot":
            nn.init.xavier_normal_(lin.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
        d = width
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers)


def cnn(side: int) -> nn.Sequential:
    flat = 16 * (side // 4) ** 2
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(flat, 10))


class Recurrent(nn.Module):
    """A recurrent layer read at its last step by a linear head."""

    def __init__(self, cell: str, d_in: int = 8, hidden: int = 64, classes: int = 4):
        super().__init__()
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM}[cell]
        self.rnn = kind(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        if cell == "lstm":  # forget-gate bias 1 (Jozefowicz et al. 2015)
            with torch.no_grad():
                self.rnn.bias_hh_l0[hidden:2 * hidden].fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def transformer() -> GPT:
    return GPT(GPTConfig(vocab=16, seq=16, d=64, layers=2, heads=4, batch=BATCH))


def warmup_cosine(top: float, warm: int, total: int) -> Callable[[int], float]:
    return lambda s: top * (s + 1) / warm if s < warm else \
        top * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1)))


def ce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, y)


def seeded(seed: int) -> None:
    torch.manual_seed(seed)
