"""ATen ops of a watched step: plain, sampled (activation statistics) and flushing.

On a GPU the sampled step's cost is its extra kernels (and the host work that queues
them, which runs ahead of the GPU when nothing waits). The count does not depend on the
batch or sequence size, so it is taken on the CPU with a short sequence: a
``TorchDispatchMode`` counts every op dispatched during each step, split into ops that
launch a kernel and ops that only make views or detach (no kernel on any device).

Run: python benchmarks/sampled_ops.py [--gpt-config gpt2] [--seq 16]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gradhealth import watch  # noqa: E402
from models import GPT, GPT_CONFIGS, gpt_loss  # noqa: E402

METADATA_ONLY = {"aten.detach", "aten.view", "aten.select", "aten.slice", "aten.t",
                 "aten.transpose", "aten.expand", "aten.unsqueeze", "aten.squeeze",
                 "aten._unsafe_view", "aten.alias", "aten.as_strided", "aten.split",
                 "aten.split_with_sizes", "aten.unbind", "aten.permute", "aten.reshape",
                 "aten.lift_fresh", "aten.empty", "aten.empty_like", "aten.empty_strided"}


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def kernels(self) -> int:
        return sum(n for op, n in self.ops.items() if op not in METADATA_ONLY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt-config", default="gpt2", choices=sorted(GPT_CONFIGS))
    parser.add_argument("--seq", type=int, default=16, help="tokens per sequence (CPU: keep short)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = dataclasses.replace(GPT_CONFIGS[args.gpt_config], seq=args.seq, batch=1)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    tokens = torch.randint(0, cfg.vocab, (1, cfg.seq + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    counts = []
    with watch(model, opt, sample_every=4, flush_every=6) as w:
        for _ in range(8):  # steps 0 and 4 sampled, step 5 flushes; step 0 warms caches
            count = Count()
            with count:
                opt.zero_grad()
                loss = gpt_loss(model(x), y)
                loss.backward()
                w.log_loss(loss)
                opt.step()
            counts.append(count)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"GPT {args.gpt_config} ({cfg.layers} layers, d={cfg.d}, {n_params:.0f}M "
          f"parameters), 1x{cfg.seq} tokens, torch {torch.__version__}")
    print(f"{'step':<22}{'ATen ops':>10}{'kernels':>10}")
    for label, i in (("plain", 3), ("sampled", 4), ("flush", 5)):
        c = counts[i]
        print(f"{label:<22}{sum(c.ops.values()):>10}{c.kernels():>10}")
    extra = counts[4].ops - counts[3].ops
    print("sampled step, most frequent extra ops:",
          ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in extra.most_common(10)))


if __name__ == "__main__":
    main()
