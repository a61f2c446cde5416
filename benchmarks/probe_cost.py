"""Cost of gh.probe against one plain training step of the same model.

Model: a ~10M-parameter ReLU MLP (784-2048-2048-2048-10), batch 256, on CPU by default.
The two are interleaved in one process and the median of each is compared, so machine
noise hits both alike. Acceptance (issue 2): ratio <= 3.

Run: python benchmarks/probe_cost.py [--device cuda] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gradhealth import probe


def build(device: str) -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
        nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10),
    ).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(256, 784, device=args.device)
    y = torch.randint(0, 10, (256,), device=args.device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def probe_once() -> None:
        probe(model, x, y)

    for _ in range(3):  # warm-up: allocator, thread pools
        train_step()
        probe_once()
    step_t, probe_t = [], []
    for _ in range(args.repeats):
        for fn, acc in ((train_step, step_t), (probe_once, probe_t)):
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            acc.append(time.perf_counter() - t0)
    step, prb = statistics.median(step_t), statistics.median(probe_t)
    print(f"model: {n_params / 1e6:.1f}M parameters, batch 256, device {args.device}")
    print(f"plain training step  median {step * 1e3:8.1f} ms")
    print(f"gh.probe             median {prb * 1e3:8.1f} ms")
    print(f"ratio probe / step   {prb / step:.2f}x  (target <= 3)")


if __name__ == "__main__":
    main()
