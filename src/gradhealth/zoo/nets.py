"""The zoo's networks: an MLP and a conv net builder, and the modules some cases need."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def mlp(depth: int, width: int, act: Callable[[], nn.Module], init: Callable | None,
        n_in: int | None = None, n_out: int = 10,
        norm: bool | Callable[[int], nn.Module] = False) -> nn.Sequential:
    """``depth`` hidden Linear layers of ``width`` with ``act`` + a head; ``norm``: a
    normalisation layer between each Linear and its activation (True: BatchNorm1d)."""
    make_norm = nn.BatchNorm1d if norm is True else norm
    layers: list[nn.Module] = []
    fan = n_in or width
    for _ in range(depth):
        lin = nn.Linear(fan, width)
        if init is not None:
            init(lin.weight)
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if make_norm:
            layers.append(make_norm(width))
        layers.append(act())
        fan = width
    layers.append(nn.Linear(fan, n_out))
    return nn.Sequential(*layers)


def conv_net(depth: int, norm: Callable[[int], nn.Module], width: int = 16, c_in: int = 3,
             n_out: int = 10) -> nn.Sequential:
    """``depth`` 3x3 convolutions (PyTorch's default init), each followed by ``norm`` and
    ReLU, max-pooling after the second and the fourth; global average pooling and a head."""
    layers: list[nn.Module] = []
    c = c_in
    for i in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), norm(width), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))


class Log(nn.Module):
    """log(x): NaN for the negative inputs it will be given (a forward producer)."""

    def forward(self, x):
        return torch.log(x)


class RootMeanSquare(nn.Module):
    """x + sqrt(mean((0*x)^2)): finite forward, NaN backward (d sqrt at 0 is inf; inf*0)."""

    def forward(self, x):
        return x + torch.sqrt((x * 0).pow(2).mean(dim=-1, keepdim=True))


class Recurrent(nn.Module):
    """An nn.RNN read out at the last step (loss at the end: the adding-problem set-up)."""

    def __init__(self, n_in: int, hidden: int, nonlinearity: str):
        super().__init__()
        self.rnn = nn.RNN(n_in, hidden, nonlinearity=nonlinearity, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class PreLNBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class PreLNTransformer(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 64, heads: int = 4, depth: int = 6, T: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.02)
        self.blocks = nn.Sequential(*[PreLNBlock(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.pos)))
