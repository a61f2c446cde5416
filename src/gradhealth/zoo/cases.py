"""The zoo's cases: each builds a model and a seeded batch and states the diagnosis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from gradhealth.zoo.nets import (
    Log,
    PreLNTransformer,
    Recurrent,
    RootMeanSquare,
    conv_net,
    mlp,
)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]
    expected: frozenset[tuple[str, str | None]]  # (kind, module or None for "any module")
    why: str
    feedforward: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)  # "code-bug": a bug in forward()

    @property
    def healthy(self) -> bool:
        return not self.expected


def _batch(n: int = 256, d: int = 128, classes: int = 10, seed: int = 1, scale: float = 1.0,
           pixels: bool = False):
    """Gaussian inputs (``pixels``: uniform in [0, 1]) times ``scale``, and class labels."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand if pixels else torch.randn)(n, d, generator=g)
    return x * scale, torch.randint(0, classes, (n,), generator=g)


def _normal(std: float) -> Callable:
    return lambda w: nn.init.normal_(w, 0.0, std)


def _he(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, nonlinearity="relu")


def _scaled_he(scale: float) -> Callable:
    return lambda w: (nn.init.kaiming_normal_(w, nonlinearity="relu"), w.data.mul_(scale))


def _glorot_tanh(w: torch.Tensor) -> None:
    nn.init.xavier_normal_(w, gain=nn.init.calculate_gain("tanh"))


def _lecun(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, nonlinearity="linear")


def _seeded(seed: int, make: Callable[[], tuple]) -> Callable[[], tuple]:
    def build():
        torch.manual_seed(seed)
        return make()
    return build


def _dead_layer():
    model = mlp(6, 128, nn.ReLU, _he)
    with torch.no_grad():  # 80% of the third layer's units get a bias no input overcomes
        model[4].bias[: int(0.8 * 128)] = -50.0
    return (model, *_batch())


def _nan_forward():
    model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 128), Log(),
                          nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    return (model, *_batch())


def _nan_backward():
    model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), RootMeanSquare(),
                          nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    return (model, *_batch())


def _rnn(nonlinearity: str, recurrent_init: Callable, T: int, input_scale: float, positive: bool):
    def make():
        model = Recurrent(4, 32, nonlinearity)
        with torch.no_grad():
            recurrent_init(model.rnn.weight_hh_l0)
            nn.init.zeros_(model.rnn.bias_hh_l0)
            nn.init.zeros_(model.rnn.bias_ih_l0)
        g = torch.Generator().manual_seed(2)
        x = torch.rand(64, T, 4, generator=g) * input_scale
        x = x if positive else (x - input_scale / 2)
        return model, x, torch.randn(64, 1, generator=g)
    return make


def _orthogonal(gain: float) -> Callable:
    return lambda w: nn.init.orthogonal_(w, gain=gain)


def _scaled_identity(scale: float) -> Callable:
    return lambda w: w.copy_(torch.eye(w.shape[0]) * scale)


def _cnn() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    layers: list[nn.Module] = []
    c = 3
    for i, width in enumerate((32, 32, 64, 64, 64, 64)):
        conv = nn.Conv2d(c, width, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        assert conv.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        c = width
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    g = torch.Generator().manual_seed(3)
    return model, torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)


def _transformer():
    model = PreLNTransformer()
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 64, (32, 32), generator=g)
    return model, tokens, torch.randint(0, 64, (32, 32), generator=g)


def _mlp_case(depth, width, act, init, scale=1.0, pixels=False, **kw):
    return lambda: (mlp(depth, width, act, init, **kw),
                    *_batch(d=kw.get("n_in") or width, scale=scale, pixels=pixels))


def _conv_case(depth, norm, scale, pixels=False):
    def make():
        g = torch.Generator().manual_seed(3)
        x = (torch.rand if pixels else torch.randn)(32, 3, 16, 16, generator=g) * scale
        return conv_net(depth, norm), x, torch.randint(0, 10, (32,), generator=g)
    return make


def _group_norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(4, width)


V, E, S, D, N = "vanishing", "exploding", "saturation", "dead_units", "nonfinite"

CASES: tuple[Case, ...] = (
    # -- sick at initialisation ------------------------------------------------------
    Case("sigmoid-default-10", _seeded(0, _mlp_case(10, 128, nn.Sigmoid, None)),
         frozenset({(V, None)}), "sigmoid' <= 1/4 and n*Var(W) = 1/3: ~1/12 per layer"),
    Case("sigmoid-small-10", _seeded(0, _mlp_case(10, 128, nn.Sigmoid, _normal(0.01))),
         frozenset({(V, None)}), "tiny weights: n*Var(W) = 0.0128 per layer"),
    Case("sigmoid-large-10", _seeded(0, _mlp_case(10, 128, nn.Sigmoid, _normal(1.0))),
         frozenset({(S, None)}), "pre-activation std ~ 6: units pinned at 0 or 1"),
    Case("tanh-small-20", _seeded(0, _mlp_case(20, 128, nn.Tanh, _normal(0.01))),
         frozenset({(V, None)}), "n*Var(W) = 0.0128: the linear regime shrinks 9x per layer"),
    Case("tanh-default-30", _seeded(0, _mlp_case(30, 256, nn.Tanh, None)),
         frozenset({(V, None)}), "torch default (n*Var = 1/3): measured 8.9e-8 (docs/science.md)"),
    Case("tanh-large-10", _seeded(0, _mlp_case(10, 128, nn.Tanh, _normal(1.0))),
         frozenset({(S, None), (E, None)}),
         "s_w^2 = 128: deep in the chaotic phase, saturated, chi_1 >> 1 (Schoenholz et al.)"),
    Case("relu-glorot-30", _seeded(0, _mlp_case(30, 256, nn.ReLU, nn.init.xavier_uniform_)),
         frozenset({(V, None)}), "He et al. 2015: 2^-14.5 over 30 layers"),
    Case("relu-default-20", _seeded(0, _mlp_case(20, 128, nn.ReLU, None)),
         frozenset({(V, None), (D, None)}),
         "n*Var(W) = 1/3 with ReLU: 1/6 of the variance per layer; deep layers' biases "
         "(U[+-1/sqrt(n)]) then outweigh the shrunken signal and fix units at zero"),
    Case("relu-exploding-20", _seeded(0, _mlp_case(20, 128, nn.ReLU, _scaled_he(1.5))),
         frozenset({(E, None)}), "He init x1.5: gradient x1.5 per layer, ~2000x over 20"),
    Case("dead-relu-layer", _seeded(0, _dead_layer), frozenset({(D, "5")}),
         "bias -50 on 80% of layer 4's units: their ReLU (module 5) never fires"),
    Case("nan-forward", _seeded(0, _nan_forward), frozenset({(N, "3")}),
         "log of negative inputs in module 3; modules 4-6 only pass the NaN on",
         tags=("code-bug",)),
    Case("nan-backward", _seeded(0, _nan_backward), frozenset({(N, "2")}),
         "sqrt'(0) = inf times 0 in module 2's backward", tags=("code-bug",)),
    Case("sigmoid-default-2", _seeded(0, _mlp_case(2, 128, nn.Sigmoid, None)),
         frozenset({(V, None)}), "two hidden layers, torch default init: chi_1 <= 1/3 * 1/16 per "
         "step, the first layer gets ~1/48 of the head's gradient norm (< e^-3)"),
    Case("sigmoid-default-3", _seeded(0, _mlp_case(3, 128, nn.Sigmoid, None)),
         frozenset({(V, None)}), "three hidden layers, torch default init: three steps of "
         "sqrt(chi_1) <= 0.14 from the head, ~0.003 (< 0.01)"),
    Case("rnn-vanishing", _seeded(0, _rnn("tanh", _orthogonal(0.5), 60, 1.0, False)),
         frozenset({(V, "rnn")}), "spectral radius 0.5: 0.5^60 through time",
         feedforward=False),
    Case("rnn-exploding", _seeded(0, _rnn("relu", _scaled_identity(1.3), 40, 0.1, True)),
         frozenset({(E, "rnn")}), "IRNN with W_hh = 1.3 I on positive inputs: 1.3^40 ~ 3.6e4",
         feedforward=False),
    # -- healthy controls -----------------------------------------------------------
    Case("relu-he-30", _seeded(0, _mlp_case(30, 256, nn.ReLU, _he)), frozenset(),
         "He init preserves the variance (measured ratio 1.25, docs/science.md)"),
    Case("bn-relu-default-20", _seeded(0, _mlp_case(20, 128, nn.ReLU, None, norm=True)),
         frozenset(), "BatchNorm renormalises every layer whatever the init"),
    Case("selu-lecun-30", _seeded(0, _mlp_case(30, 256, nn.SELU, _lecun)), frozenset(),
         "self-normalising (Klambauer et al. 2017)"),
    Case("tanh-glorot-10", _seeded(0, _mlp_case(10, 128, nn.Tanh, _glorot_tanh)), frozenset(),
         "Glorot with the tanh gain, moderate depth"),
    Case("tanh-glorot-20", _seeded(0, _mlp_case(20, 128, nn.Tanh, nn.init.xavier_normal_)),
         frozenset(), "Glorot normalised init (gain 1), 20 layers"),
    Case("preln-transformer-6", _seeded(0, _transformer), frozenset(),
         "pre-LN residual blocks keep an identity path for the gradient"),
    Case("cnn-he-6", _seeded(0, _cnn), frozenset(), "He-init conv net with max-pooling"),
    Case("relu-he-2", _seeded(0, _mlp_case(2, 128, nn.ReLU, _he)), frozenset(),
         "shallow He-init ReLU: only the default-init head step (sqrt(1/6)) shrinks the gradient"),
    Case("gelu-default-wide-2", _seeded(0, _mlp_case(2, 1024, nn.GELU, None, n_in=784)),
         frozenset(), "784-1024-1024-10 GELU, torch default init: chi_1 ~ 1/12 per step, 0.08-0.1 "
         "of the head's gradient: the closest healthy net to the shallow threshold"),
    Case("tanh-glorot-1", _seeded(0, _mlp_case(1, 32, nn.Tanh, _glorot_tanh)), frozenset(),
         "one narrow hidden layer, Glorot tanh: one step of ~0.3 from the head"),
    Case("gelu-default-wide-3", _seeded(0, _mlp_case(3, 1024, nn.GELU, None, n_in=784)),
         frozenset(), "784-1024x3-10 GELU, torch default init: three steps of ~0.3, 0.03 of the "
         "head's gradient: the closest healthy net to the three-layer threshold"),
    Case("silu-default-3", _seeded(0, _mlp_case(3, 128, nn.SiLU, None)), frozenset(),
         "SiLU, torch default init, three hidden layers: 0.026 of the head's gradient"),
    # -- healthy: normalisation layers fed unnormalised inputs -------------------------
    Case("bn-relu-x1000-3", _seeded(0, _mlp_case(3, 128, nn.ReLU, _he, norm=True, scale=1e3)),
         frozenset(), "inputs x1000: BatchNorm's backward gain 1/sigma makes the first layer's "
         "dL/d(output) ~1/1000 of the others', yet dL/dW = dL/dy x^T is unchanged"),
    Case("ln-gelu-pixels-4", _seeded(0, _mlp_case(4, 128, nn.GELU, None, n_in=784,
                                                  norm=nn.LayerNorm, scale=255.0, pixels=True)),
         frozenset(), "LayerNorm MLP on raw 0-255 pixels: the first layer's output is ~255x "
         "larger and its dL/d(output) ~255x smaller, nothing wrong"),
    Case("bn-relu-x1e-3-8", _seeded(0, _mlp_case(8, 128, nn.ReLU, _he, norm=True, scale=1e-3)),
         frozenset(), "inputs x1e-3: the first layer's dL/d(output) is ~1000x the others' "
         "(BatchNorm divides by a tiny sigma); its weight gradient is normal"),
    Case("gn-cnn-pixels-5", _seeded(0, _conv_case(5, _group_norm, 255.0, pixels=True)),
         frozenset(), "GroupNorm conv net on raw 0-255 pixels"),
    Case("bn-cnn-x1e-3-4", _seeded(0, _conv_case(4, nn.BatchNorm2d, 1e-3)), frozenset(),
         "BatchNorm conv net on inputs x1e-3"),
    Case("rnn-orthogonal-16", _seeded(0, _rnn("tanh", _orthogonal(1.0), 16, 1.0, False)),
         frozenset(), "orthogonal recurrence, short sequence", feedforward=False),
)


def case(name: str) -> Case:
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"no zoo case {name!r}; known: {', '.join(c.name for c in CASES)}")
