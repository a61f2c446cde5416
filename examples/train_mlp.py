"""A plain PyTorch training loop: an MLP on a synthetic classification task.

Nothing here knows about gradhealth. Run it alone, or watched:

    python examples/train_mlp.py --steps 300
    gradhealth run examples/train_mlp.py --steps 300
    gradhealth run --serve --guard examples/train_mlp.py --steps 2000 --nan-at 500 --delay 0.01

``--nan-at K`` puts a NaN into the batch of step K (the watch names it; under ``--guard``
the step is skipped and training goes on), ``--fail-at K`` raises at step K, ``--delay S``
sleeps S seconds per step (to watch it live).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def data(n: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 32, generator=generator)
    w = torch.randn(32, classes, generator=generator)
    return x, (x @ w + 0.3 * torch.randn(n, classes, generator=generator)).argmax(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--nan-at", type=int, default=None, metavar="K")
    parser.add_argument("--fail-at", type=int, default=None, metavar="K")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--print-every", type=int, default=50)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = data(4096, 10, g)
    layers: list[nn.Module] = []
    width = 32
    for _ in range(args.depth - 1):
        layers += [nn.Linear(width, args.width), nn.ReLU()]
        width = args.width
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    print(f"training a {args.depth}-layer MLP for {args.steps} steps", flush=True)
    for step in range(args.steps):
        if step == args.fail_at:
            raise RuntimeError(f"failing at step {step} as asked (--fail-at)")
        idx = torch.randint(0, len(x), (args.batch,), generator=g)
        xb, yb = x[idx], y[idx]
        if step == args.nan_at:
            xb = xb.clone()
            xb[0, 0] = float("nan")
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        if (step + 1) % args.print_every == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}", flush=True)
        if args.delay:
            time.sleep(args.delay)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    print(f"done: training accuracy {accuracy:.1%}", flush=True)


if __name__ == "__main__":
    main()
