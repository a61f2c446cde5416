"""Recurrent architectures made sick, for the real-architecture zoo (``zoo.real``): a ReLU
RNN language model whose recurrence grows (IRNN with W_hh = 1.3 I) and an LSTM read after
300 steps at torch's default init (its forget gate near 1/2). Each has its check in plain
torch in ``zoo.verify``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradhealth.zoo.everyday import SEQ, VOCAB, tokens


class RecurrentLM(nn.Module):
    """Embedding -> ReLU RNN -> Linear, loss at the last step (next-word after a prefix)."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.rnn = nn.RNN(d, d, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids) * 0.1)
        return self.head(out[:, -1])


def irnn(gain: float) -> Callable[[], tuple]:
    def build() -> tuple:
        model = RecurrentLM()
        with torch.no_grad():
            rnn: Any = model.rnn  # its weights are attributes torch's stubs do not list
            rnn.weight_hh_l0.copy_(torch.eye(64) * gain)
            rnn.bias_hh_l0.fill_(0.1)
        ids = tokens(6, seq=SEQ + 8)
        return model, ids, tokens(7, seq=1)[:, 0]
    return build


class SequenceClassifier(nn.Module):
    """An LSTM read at its last step: the class is written into the first three steps of
    a long sequence of noise (a memory task), so only a gradient that crosses the whole
    sequence can learn it."""

    def __init__(self, features: int = 8, hidden: int = 32):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def memory_batch(seed: int | torch.Generator, steps: int = 300, batch: int = 64) -> tuple:
    """Gaussian noise (batch, steps, 8) whose first three steps carry the class: feature
    0 at +3 or -3. ``seed``: a seed, or a generator to draw a stream of batches from."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, 8, generator=g)
    y = torch.randint(0, 2, (batch,), generator=g)
    x[:, :3, 0] = 3.0 * (2 * y[:, None] - 1).float()
    return x, y


def long_lstm(steps: int = 300) -> Callable[[], tuple]:
    """torch's default LSTM init (forget-gate bias ~U(-1/sqrt(H), 1/sqrt(H)) twice, gate
    near 1/2) over ``steps`` steps: 0.5^300 through time."""
    def build() -> tuple:
        with torch.random.fork_rng():
            torch.manual_seed(11)
            model = SequenceClassifier()
        return (model, *memory_batch(3, steps))
    return build
