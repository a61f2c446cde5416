"""``gradhealth demo``: a deliberately sick deep network on real data, diagnosed.

The data are scikit-learn's digits (they ship with scikit-learn: nothing is downloaded).
The network is a 20-layer sigmoid MLP with PyTorch's default initialisation, the set-up
Glorot & Bengio 2010 showed to stall; the control is the same depth with ReLU and He
initialisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from gradhealth.lab.data import load_digits
from gradhealth.probe import probe
from gradhealth.zoo import mlp

DEPTH, WIDTH, BATCH = 20, 64, 256


def sick_network(n_in: int, n_out: int) -> nn.Module:
    return mlp(DEPTH, WIDTH, nn.Sigmoid, None, n_in=n_in, n_out=n_out)


def healthy_network(n_in: int, n_out: int) -> nn.Module:
    init = lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")  # noqa: E731
    return mlp(DEPTH, WIDTH, nn.ReLU, init, n_in=n_in, n_out=n_out)


def run_demo(console: Console, out: Path) -> int:
    torch.manual_seed(0)
    data = load_digits()
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    n_in, n_out = x.shape[1], data.n_classes
    out.mkdir(parents=True, exist_ok=True)

    console.rule(f"1. a {DEPTH}-layer sigmoid MLP, PyTorch default init, on digits")
    sick = probe(sick_network(n_in, n_out), x, y)
    console.print(sick)
    console.rule(f"2. the same depth with ReLU and He init")
    healthy = probe(healthy_network(n_in, n_out), x, y)
    console.print(healthy)

    path = out / "probe.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"sick": sick.to_dict(), "healthy": healthy.to_dict()},
                              indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(path)
    console.print(f"wrote {path}", markup=False)
    return 0 if (not sick.ok and healthy.ok) else 1
