"""Every place a watched training step makes the host wait for the GPU (CUDA only).

``tests/test_cuda.py`` fails at the first synchronisation; this lists them all: it trains
the GPT under ``gh.watch`` with ``torch.cuda.set_sync_debug_mode("warn")`` and records the
Python stack of each warning, then prints each distinct site (the innermost gradhealth
frame and its caller) with the steps it happened on. Step 0 makes the watch's cached
device constants and is reported apart.

Run: python benchmarks/sync_sites.py [--gpt-config tiny] [--steps 60] [--every 10]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gradhealth import watch  # noqa: E402
from overhead import make_task  # noqa: E402


def site(stack: list[traceback.FrameSummary]) -> str:
    ours = [f for f in stack if f"{os.sep}gradhealth{os.sep}" in f.filename]
    frames = ours[-2:] if ours else stack[-3:-1]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                       for f in reversed(frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt-config", default="tiny")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="sample_every and flush_every")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sync_sites: needs a CUDA device (host waits only exist there)")
    args.device = "cuda"
    torch.manual_seed(0)
    model, batches, loss_fn = make_task("gpt", args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    sites: dict[str, list[int]] = collections.defaultdict(list)
    step = 0

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            sites[site(traceback.extract_stack()[:-1])].append(step)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        with watch(model, opt, store=os.path.join(tmp, "r.db"), flush_every=args.every,
                   sample_every=args.every) as w:
            for step in range(args.steps):
                x, y = batches[step % len(batches)]
                opt.zero_grad(set_to_none=True)
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with torch.autocast("cuda", dtype=torch.bfloat16,
                                        enabled=args.dtype == "bf16"):
                        loss = loss_fn(model(x), y)
                    loss.backward()
                    w.log_loss(loss)
                    opt.step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
    later = {s: steps for s, steps in sites.items() if any(steps)}
    print(f"sync_sites: {args.steps} steps, sample_every = flush_every = {args.every}: "
          f"{len(later)} site(s) synchronise after step 0")
    for s, steps in sorted(sites.items(), key=lambda kv: -len(kv[1])):
        shown = sorted(set(steps))
        print(f"  {len(steps):4d}x steps {shown[:8]}{' ...' if len(shown) > 8 else ''}: {s}")


if __name__ == "__main__":
    main()
