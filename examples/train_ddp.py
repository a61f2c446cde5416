"""DistributedDataParallel on CPU (gloo), for torchrun:

    torchrun --nproc-per-node 2 examples/train_ddp.py
    torchrun --nproc-per-node 2 -m gradhealth run examples/train_ddp.py

Nothing here knows about gradhealth; under ``gradhealth run`` every rank watches its DDP
model and rank 0 writes the store. Run alone (no torchrun) it trains on one process.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    if distributed:
        model = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    for _ in range(args.steps):
        x = torch.randn(32, 16, generator=g)
        loss = nn.functional.cross_entropy(model(x), x[:, :4].argmax(dim=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rank == 0:
        print(f"done: {args.steps} steps on {dist.get_world_size() if distributed else 1} "
              f"process(es)")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
