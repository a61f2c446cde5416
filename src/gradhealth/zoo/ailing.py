"""Everyday architectures made sick: the sick half of the real-architecture zoo
(``gradhealth.zoo.real``).

Each builder makes a model and a seeded batch with one pathology a user meets (an
initialisation range far too large, VGG's original N(0, 0.01) init, a hand-written
normalisation on padding rows, a custom autograd.Function, log of a softmax, float16
overflow, an attention row with every key masked, units killed or saturated by a few
steps at a large learning rate, functional activations), and each has a ``verify``
function in ``zoo.verify`` that measures the label with plain torch code, independent of
gradhealth's own measurement.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.zoo.everyday import (
    CLASSES,
    HF_SMALL,
    SEQ_BATCH,
    VOCAB,
    images,
    tokens,
)
from gradhealth.zoo.vision import import_torchvision


def hugging_face_init(config: str, model: str, key: str, initializer_range: float) -> Callable:
    """A Hugging Face model from the zoo's small config with another init range."""
    def build() -> tuple:
        import transformers

        cfg = getattr(transformers, config)(**HF_SMALL[key], initializer_range=initializer_range)
        ids = tokens(6)
        return getattr(transformers, model)(cfg), {"input_ids": ids, "labels": ids}, None
    return build


def vgg11_init(std: float | None, gain: float = 1.0) -> Callable:
    """torchvision's VGG-11 with every weight N(0, std^2) and zero biases (Simonyan &
    Zisserman 2014's init: std 0.01), or He init times ``gain`` (std None)."""
    def build() -> tuple:
        model = import_torchvision().models.vgg11(num_classes=CLASSES)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    if std is None:
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                        m.weight.mul_(gain)
                    else:
                        nn.init.normal_(m.weight, 0.0, std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        return (model, *images(5))
    return build


class HandRMSNorm(nn.Module):
    """x / (RMS(x) + eps), written by hand: the epsilon outside the square root keeps the
    forward finite on a zero row, but d sqrt(u)/du at u = 0 is infinite, times du/dx = 0."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)  # HAND-NORM


class PaddedLM(nn.Module):
    """A small pre-LN transformer LM whose embedding has a padding row (zeros) and whose
    first normalisation is ``HandRMSNorm``."""

    def __init__(self, d: int = 64, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d, padding_idx=0)
        self.norm = HandRMSNorm()
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, ids):
        return self.head(self.encoder(self.norm(self.embed(ids))))


def padded_lm() -> tuple:
    ids = tokens(6)
    ids[:, -4:] = 0  # right padding: the last four positions of every sequence
    return PaddedLM(), ids, tokens(7)


class ScaledSign(torch.autograd.Function):
    """A sign with a "normalised" straight-through gradient: dL/dx = g / |x|, infinite at
    x = 0 (dropout's zeros feed it; dropout's backward then multiplies inf by 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / x.abs()


class BinaryBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return ScaledSign.apply(self.drop(self.fc(x)))


def binary_net() -> tuple:
    model = nn.Sequential(nn.Linear(128, 256), BinaryBlock(256), nn.Linear(256, CLASSES))
    g = torch.Generator().manual_seed(3)
    return model, torch.randn(64, 128, generator=g), torch.randint(0, CLASSES, (64,), generator=g)


class Sharpened(nn.Module):
    """A classifier that returns log-probabilities sharpened by a temperature, written as
    log(softmax(z / T)) instead of log_softmax: probabilities under ~1e-38 become 0."""

    def __init__(self, temperature: float = 0.01):
        super().__init__()
        self.backbone = import_torchvision().models.resnet18(num_classes=CLASSES)
        self.temperature = temperature

    def forward(self, x):
        z = self.backbone(x) / self.temperature
        return torch.log(torch.softmax(z, dim=-1))  # LOG-SOFTMAX


def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(out, y)


def sharpened() -> tuple:
    return (Sharpened(), *images(5))


def half_mlp() -> tuple:
    """A He-initialised float16 MLP on raw 16-bit audio frames (samples in [-32768, 32767],
    exact in float16, whose largest finite value is 65504): the first layer's sums
    overflow."""
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, CLASSES))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-32768, 32768, (32, 256), generator=g).float()
    return model.half(), x.half(), torch.randint(0, CLASSES, (32,), generator=g)


class MaskedAttention(nn.Module):
    """Self-attention written by hand: padding keys filled with -inf before the softmax,
    so a query whose keys are all padding gets softmax of a row of -inf: NaN."""

    def __init__(self, d: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, pad):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).unbind(2)
        scores = torch.einsum("nqhe,nkhe->nhqk", q, k) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # BLANK-ROW
        return self.out(torch.einsum("nhqk,nkhe->nqhe", weights, v).reshape(n, t, d))


class PaddedClassifier(nn.Module):
    """Token ids -> two pre-LN blocks of ``MaskedAttention`` and an MLP -> mean-pooled head;
    padding (id 0) masked as keys."""

    def __init__(self, d: int = 64, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(depth))
        self.attn = nn.ModuleList(MaskedAttention(d) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(),
                                               nn.Linear(4 * d, d)) for _ in range(depth))
        self.head = nn.Linear(d, CLASSES)

    def forward(self, ids):
        h, pad = self.embed(ids), ids == 0
        for norm, attn, mlp in zip(self.norms, self.attn, self.mlp):
            h = h + attn(norm(h), pad)
            h = h + mlp(h)
        return self.head(h.mean(dim=1))


def blank_row() -> tuple:
    ids = tokens(6)
    ids[2] = 0  # an empty sequence: every key of its rows masked
    g = torch.Generator().manual_seed(8)
    return PaddedClassifier(), ids, torch.randint(0, CLASSES, (SEQ_BATCH,), generator=g)


def trained(make: Callable[[], tuple], lr: float, steps: int) -> Callable[[], tuple]:
    """``make``'s model after ``steps`` plain SGD steps on its own batch at ``lr``."""
    def build() -> tuple:
        model, x, y = make()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.zero_grad(set_to_none=True)
        return model, x, y
    return build


class FunctionalMLP(nn.Module):
    """784-256-256-10 with ``F.relu`` called in ``forward``: no activation module."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 256)
        self.head = nn.Linear(256, CLASSES)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def relu_mlp(functional: bool = False) -> Callable[[], tuple]:
    """A 784-256-256-10 ReLU classifier on pixels in [0, 1]."""
    def build() -> tuple:
        g = torch.Generator().manual_seed(9)
        x = torch.rand(128, 784, generator=g)
        model: nn.Module = FunctionalMLP() if functional else nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, CLASSES))
        return model, x, torch.randint(0, CLASSES, (128,), generator=g)
    return build


class GatedConv(nn.Module):
    """Conv -> F.relu, then a gate torch.sigmoid(conv(h)) * h: functional activations."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.gate = nn.Conv2d(c, c, 1)
        self.head = nn.Linear(c, CLASSES)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = torch.sigmoid(self.gate(h)) * h
        return self.head(h.mean(dim=(2, 3)))


def gated(gate_gain: float = 1.0, bias: float = 0.0) -> Callable[[], tuple]:
    def build() -> tuple:
        model = GatedConv()
        with torch.no_grad():
            model.gate.weight.mul_(gate_gain)
            if bias and model.gate.bias is not None:
                model.gate.bias.fill_(bias)
        return (model, *images(5, size=32))
    return build
