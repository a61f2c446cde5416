"""Where a watched step's time goes: each step timed alone, by kind of step.

``overhead.py`` gives the ratio that counts; when it is too high, this says which steps
pay. The unmonitored model and the watched one (``gh.watch`` at its defaults) each run
``--steps`` steps with a synchronisation after every step, so each step's wall time is
its own. Steps are split by what the watch does in them: an ordinary step (the fused
norm pass), a sampled one (activation statistics, every ``sample_every``), a flushing one
(the store is written, every ``flush_every``), and the step after either (it judges the
numbers they queued). ``host ms`` is the time until ``step()`` returned, before the
synchronisation: where it exceeds the GPU's time, the host is the bottleneck.

Per-step synchronisation removes the overlap of host and GPU, so these times add up to
more than ``overhead.py``'s; they locate a cost, they do not measure the ratio.

``--why`` then profiles one more sampled step of the watched model: the host's Python
functions (cProfile, by own time) and the ATen ops (``torch.profiler``, by host time, and
on a GPU by device time).

Run: python benchmarks/step_profile.py --device cuda --dtype bf16 --gpt-config gpt2 [--why]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Runner, make_task, sync  # noqa: E402

EVERY = 50  # the watch's nominal sample_every and flush_every, given explicitly here


def kind(i: int) -> str:
    """What the watch does at 0-based step i under its defaults."""
    if i % EVERY == 0:
        return "sampled"
    if i % EVERY == EVERY - 1:
        return "flush"
    if i % EVERY in (1,):
        return "after"
    return "ordinary"


def profile(runner: Runner, steps: int, device: str) -> dict[str, list[tuple[float, float]]]:
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        runner.step()
        t1 = time.perf_counter()
        sync(device)
        t2 = time.perf_counter()
        by_kind.setdefault(kind(i), []).append((t1 - t0, t2 - t0))
    return by_kind


def why(runner: Runner, device: str, top: int = 25) -> None:
    """Profile the next sampled step of ``runner`` (steps up to it run unprofiled)."""
    while runner.i % EVERY:
        runner.step()
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    python = cProfile.Profile()
    with torch.profiler.profile(activities=activities) as ops:
        python.enable()
        runner.step()
        python.disable()
        sync(device)
    text = io.StringIO()
    pstats.Stats(python, stream=text).sort_stats("tottime").print_stats(top)
    print("\nsampled step, Python functions by own time (cProfile):")
    print("\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip()))
    table = ops.key_averages()
    print("\nsampled step, ATen ops by host time (torch.profiler):")
    print(table.table(sort_by="self_cpu_time_total", row_limit=top))
    if device.startswith("cuda"):
        print("\nsampled step, ATen ops by device time (torch.profiler):")
        print(table.table(sort_by="self_device_time_total", row_limit=top // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--gpt-config", default="tiny")
    parser.add_argument("--models", default="gpt")
    parser.add_argument("--steps", type=int, default=150, help="a multiple of 50")
    parser.add_argument("--mlp-width", type=int, default=1024)
    parser.add_argument("--mlp-depth", type=int, default=3)
    parser.add_argument("--mlp-batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both models (the warm-up steps compile them)")
    parser.add_argument("--why", action="store_true",
                        help="then profile one sampled step of the watched model")
    args = parser.parse_args()
    args.every = EVERY  # exactly every 50 steps (the defaults' "auto" may space them further)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, batches, loss_fn = make_task(name, args)
        with tempfile.TemporaryDirectory() as tmp:
            rows = {}
            for config in ("none", "watch"):
                runner = Runner(config, model, batches, loss_fn, args, tmp)
                try:
                    profile(runner, EVERY, args.device)  # warm-up: allocator, kernels, caches
                    rows[config] = profile(runner, args.steps, args.device)
                    if args.why and config == "watch":
                        why(runner, args.device)
                finally:
                    runner.close()
                del runner
        print(f"\n{name} ({args.device} {args.dtype}, {args.steps} steps after {EVERY} of "
              f"warm-up, synchronised after each step; median, [min, max] of step ms)")
        print(f"{'config':<7}{'step':<10}{'n':>4}{'host ms':>10}{'step ms':>10}  range")
        for config, by_kind in rows.items():
            for k in ("ordinary", "sampled", "after", "flush"):
                if k not in by_kind:
                    continue
                host = statistics.median(h for h, _ in by_kind[k]) * 1e3
                total = [t * 1e3 for _, t in by_kind[k]]
                print(f"{config:<7}{k:<10}{len(total):>4}{host:10.2f}"
                      f"{statistics.median(total):10.2f}  [{min(total):.2f}, {max(total):.2f}]")


if __name__ == "__main__":
    main()
