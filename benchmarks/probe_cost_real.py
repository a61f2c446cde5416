"""Cost of gh.probe against one plain training step, over the real-architecture zoo.

For each healthy everyday architecture of ``gradhealth.zoo.real`` (torchvision, Hugging
Face, nn.TransformerEncoder, recurrent LMs at their library's default initialisation):
one plain training step (forward, backward, SGD step) and one ``gh.probe`` of the same
model and batch, interleaved in one process, median of each; prints the ratio per model,
then the median and the worst over the zoo. Ratios only, never absolute times: they are
what carries from one machine to another. Acceptance (issue 14): median <= 2, none > 3.

Run: python benchmarks/probe_cost_real.py [--repeats 7] [--threads 1] [names...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradhealth import probe
from gradhealth.measure.loss import compute_loss
from gradhealth.zoo.real import HEALTHY


def ratio(case, repeats: int) -> float:
    torch.manual_seed(0)
    model, x, y = case.build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    model.train()

    def call():
        if isinstance(x, dict):
            return model(**x)
        return model(x)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        compute_loss(call(), y, None).backward()
        opt.step()

    def probe_once() -> None:
        probe(model, x, y)

    train_step()  # warm-up: allocator, lazy inits
    probe_once()
    step_t, probe_t = [], []
    for _ in range(repeats):
        for fn, acc in ((train_step, step_t), (probe_once, probe_t)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(probe_t) / statistics.median(step_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steady on a shared machine)")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratios = {}
    for case in HEALTHY:
        if args.names and case.name not in args.names:
            continue
        ratios[case.name] = ratio(case, args.repeats)
        print(f"{case.name:22s} probe / step {ratios[case.name]:5.2f}x", flush=True)
    values = list(ratios.values())
    worst = max(ratios, key=lambda k: ratios[k])
    print(f"\nmedian {statistics.median(values):.2f}x   worst {ratios[worst]:.2f}x ({worst})"
          f"   (target: median <= 2, none > 3)")


if __name__ == "__main__":
    main()
