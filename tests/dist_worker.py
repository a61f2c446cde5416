"""One rank of the distributed tests (tests/test_distributed.py), launched by torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py \\
        {ddp,fsdp,hsdp} OUTDIR

Every rank trains the same small MLP on its half of each step's batch under
``gh.watch(guard=True, clip=...)``, with three events injected on rank 1 only: a NaN in
one element of its gradient after the all-reduce / reduce-scatter (step NAN_GRAD_STEP),
a NaN loss with finite gradients (NAN_LOSS_STEP), a NaN in its input (NAN_INPUT_STEP).
Each rank writes ``rank{r}.json`` (what it recorded and decided, and its final full
parameters); rank 0 alone should write the store ``run-0.db`` (rank 1 is given
``run-1.db`` and must not create it). ``reference()`` is the same training in one
process on the full batch, in plain torch, that the test compares against.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch import nn

STEPS = 8
BATCH = 8  # full batch; each of the 2 ranks takes half
NAN_GRAD_STEP, NAN_LOSS_STEP, NAN_INPUT_STEP = 3, 5, 6
SKIPPED = (NAN_GRAD_STEP, NAN_LOSS_STEP, NAN_INPUT_STEP)
SAMPLE_EVERY, FLUSH_EVERY = 2, 3
CLIP_NORM = 1.0
AUTOCLIP_PERCENTILE = 50.0
LR, MOMENTUM = 0.1, 0.9


def make_model() -> nn.Sequential:
    # uneven shards on 2 ranks: 7 rows -> 4 + 3, 5 -> 3 + 2, 1 -> 1 + 0 (an empty shard)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 1))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, 6, generator=g)
    y = torch.randn(BATCH, 1, generator=g)
    if step == NAN_INPUT_STEP:
        x[BATCH // 2, 0] = math.nan  # the first row of rank 1's half
    return x, y


def module_norms(model: nn.Module, grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reference per-module norms: the norm of all the module's own parameters' values."""
    out = {}
    for mname, module in model.named_modules():
        own = [grads[f"{mname}.{n}" if mname else n] for n, _ in
               module.named_parameters(recurse=False)]
        if own:
            out[mname] = float(torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in own])))
    return out


def out_rms(model: nn.Sequential, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        out = {}
        for name, module in model.named_children():
            x = module(x)
            out[name] = float(x.square().mean().sqrt())
        return out


def reference(clip: str) -> dict:
    """The run in one process on each step's full batch: plain torch, no gradhealth."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    history: list[float] = []
    steps = []
    for step in range(STEPS):
        x, y = batch(step)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        rec = {"step": step, "global_norm": float(torch.nn.utils.get_total_norm(
            [p.grad for p in model.parameters()])), "modules": module_norms(model, grads),
            "params": {n: float(torch.linalg.vector_norm(g)) for n, g in grads.items()},
            "skipped": step in SKIPPED}
        if step % SAMPLE_EVERY == 0:  # activations are rank-local: rank 0's half batch
            rec["rank0_out_rms"] = out_rms(model, x[:BATCH // 2])
        if step not in SKIPPED:
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            pre = rec["global_norm"]
            if clip == "clipnorm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
                rec["clipped"] = pre > CLIP_NORM
            else:  # AutoClip: the percentile of the pre-clip norms so far, this one included
                history.append(pre)
                threshold = float(torch.quantile(torch.tensor(history, dtype=torch.float64),
                                                 AUTOCLIP_PERCENTILE / 100))
                torch.nn.utils.clip_grad_norm_(model.parameters(), threshold)
                rec["clipped"] = pre > threshold
            opt.step()
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
            delta = {n: after[n] - before[n] for n in after}
            rec["weight_norm"] = module_norms(model, after)
            rec["update_norm"] = module_norms(model, delta)
        steps.append(rec)
    return {"steps": steps, "params": {n: p.detach().tolist() for n, p in model.named_parameters()}}


# ---------------------------------------------------------------- one rank under torchrun
def main(mode: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    warnings.filterwarnings("error", module="gradhealth")  # e.g. DTensor mixed with Tensor
    # a collective that waits this long fails the run instead of hanging it
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != 2:
        raise SystemExit(f"expected 2 ranks, got {world}")
    from gradhealth import watch
    from gradhealth.clip import AutoClip, ClipNorm
    from gradhealth.measure import distributed

    result: dict = {"rank": rank, "mode": mode, "checks": {}}
    result["checks"]["dtensor_norms"] = check_dtensor_norms(rank)
    result["checks"]["clippers"] = check_clippers(mode)
    result["checks"]["agree"] = [distributed.agree(rank), distributed.agree(False),
                                 distributed.agree(rank == 1)]

    model = make_model()
    wrapped = wrap(model, mode)
    opt = torch.optim.SGD(wrapped.parameters(), lr=LR, momentum=MOMENTUM)
    clip = ClipNorm(CLIP_NORM) if mode == "ddp" else AutoClip(AUTOCLIP_PERCENTILE)
    result["clip"] = "clipnorm" if mode == "ddp" else "autoclip"
    w = watch(wrapped, opt, store=os.path.join(out, f"run-{rank}.db"),
                 flush_every=FLUSH_EVERY, sample_every=SAMPLE_EVERY, guard=True, clip=clip)
    recorded: list[list[float]] = []  # per-parameter norms as each rank's journal gets them
    flush = w.journal.flush

    def capture(drained, rows, layout=None):
        recorded.extend(drained["grad"][:rows].tolist())
        flush(drained, rows, layout)

    w.journal.flush = capture
    gathered = []  # the steps at which gradhealth gathered the ranks' NaN verdicts
    all_gather_object = dist.all_gather_object

    def counted(*args, **kwargs):
        gathered.append(w.steps)
        return all_gather_object(*args, **kwargs)

    dist.all_gather_object = counted
    steps = []
    with w:
        for step in range(STEPS):
            x, y = batch(step)
            half = BATCH // 2
            x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
            opt.zero_grad()
            loss = nn.functional.mse_loss(wrapped(x), y)
            loss.backward()
            if rank == 1 and step == NAN_GRAD_STEP:
                grad = model[0].weight.grad
                local = distributed.local_shard(grad)
                local.view(-1)[0] = math.nan  # this rank's shard (DDP: its whole gradient)
            if rank == 1 and step == NAN_LOSS_STEP:
                loss = torch.full((), math.nan)
            w.log_loss(loss)
            skipped_before = w.skipped
            calls = clip.steps
            opt.step()
            rec = {"step": step, "skipped": w.skipped > skipped_before}
            if clip.steps > calls:
                res = clip.last_result
                rec.update(pre_norm=float(res.pre_norm), clipped=bool(res.clipped))
            steps.append(rec)
    dist.all_gather_object = all_gather_object
    result["gathered"] = gathered
    result["steps"] = steps
    result["recorded_param_norms"] = recorded
    result["layout"] = {"names": w.layout.names, "modules": w.layout.modules,
                        "owners": w.layout.owners}
    result["findings"] = [[f.kind, f.module, f.evidence.get("step"), f.evidence.get("pass"),
                           f.evidence.get("rank")] for f in w.findings]
    result["params"] = full_params(model)
    result["store_exists"] = os.path.exists(os.path.join(out, f"run-{rank}.db"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def wrap(model: nn.Module, mode: str) -> nn.Module:
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = None
    if mode == "hsdp":  # 2 replicas of a 1-way shard: Replicate must not be summed
        mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard"))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_params(model: nn.Module) -> dict[str, list]:
    from torch.distributed.tensor import DTensor

    out = {}
    for n, p in model.named_parameters():
        t = p.full_tensor() if isinstance(p, DTensor) else p
        out[n] = t.detach().tolist()
    return out


def check_dtensor_norms(rank: int) -> list[dict]:
    """gradhealth's norms of DTensors with each placement vs the full tensor's norm."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from gradhealth.measure.shards import Shards

    torch.manual_seed(5)
    full = [torch.randn(5, 3), torch.randn(3, 4), torch.randn(1, 2)]
    mesh1 = init_device_mesh("cpu", (2,))
    mesh2 = init_device_mesh("cpu", (2, 1), mesh_dim_names=("a", "b"))
    cases = {
        "shard0": (mesh1, [Shard(0)]), "shard1": (mesh1, [Shard(1)]),
        "replicate": (mesh1, [Replicate()]),
        "hsdp(replicate,shard0)": (mesh2, [Replicate(), Shard(0)]),
        "(shard0,replicate)": (mesh2, [Shard(0), Replicate()]),
    }
    out = []
    for name, (mesh, placements) in cases.items():
        tensors = [distribute_tensor(t, mesh, placements) for t in full]
        mixed = [tensors[0], full[1], distribute_tensor(full[2], mesh1, [Replicate()])]
        for label, ts in ((name, tensors), (name + "+plain+replicated", mixed)):
            shards = Shards.of(ts)
            for p in (2.0, 1.0, math.inf):
                got = shards.norms(shards.local(ts), p).tolist()
                want = [float(torch.linalg.vector_norm(t, p)) for t in full]
                out.append({"case": label, "p": p, "got": got, "want": want})
    # a NaN on rank 1's shard only: every rank must see a non-finite norm
    t = full[0].clone()
    dt = distribute_tensor(t, mesh1, [Shard(0)])
    if rank == 1:
        dt.to_local().view(-1)[0] = math.nan
    shards = Shards.of([dt])
    out.append({"case": "nan on rank 1", "p": 2.0,
                "got": shards.norms(shards.local([dt]), 2.0).tolist(), "want": [math.nan]})
    out.append({"case": "nan on rank 1", "p": math.inf,
                "got": shards.norms(shards.local([dt]), math.inf).tolist(), "want": [math.inf]})
    return out


def check_clippers(mode: str) -> list[dict]:
    """Every clipper on this mode's gradients (FSDP2: shards) vs the same clipper on one
    process's full gradients."""
    from torch.distributed.tensor import DTensor

    from gradhealth.clip import (
        AGC,
        AutoClip,
        ClipNorm,
        ClipNormPerParameter,
        ClipValue,
        ZClip,
    )

    def clippers():
        return {"ClipValue": ClipValue(0.05), "ClipNorm": ClipNorm(0.2),
                "ClipNorm(p=1)": ClipNorm(0.5, norm_type=1.0),
                "ClipNormPerParameter": ClipNormPerParameter(0.1),
                "AGC": AGC(0.05, exclude=()), "AutoClip": AutoClip(50.0),
                "ZClip": ZClip(warmup_steps=1)}

    out = []
    x, y = batch(0)
    for name in clippers():
        model, plain = make_model(), make_model()
        wrapped = wrap(model, mode)
        half = slice(dist.get_rank() * BATCH // 2, (dist.get_rank() + 1) * BATCH // 2)
        results, full_pre = [], []
        clip_d, clip_p = clippers()[name], clippers()[name]
        for scale in (1.0, 10.0):  # two calls: AutoClip and ZClip keep a history
            model.zero_grad()
            plain.zero_grad()
            (scale * nn.functional.mse_loss(wrapped(x[half]), y[half])).backward()
            for (_, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
                q.grad = (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
            grads = [q.grad for q in plain.parameters()]
            full_pre.append(float(torch.nn.utils.get_total_norm(grads)))
            rd, rp = clip_d(model), clip_p(plain)
            errs = []
            for (_, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
                g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                errs.append(float((g - q.grad).norm() / q.grad.norm().clamp(min=1e-12)))
            results.append({"pre_norm": [float(rd.pre_norm), float(rp.pre_norm)],
                            "clipped": [bool(rd.clipped), bool(rp.clipped)],
                            "finite": [bool(rd.finite), bool(rp.finite)],
                            "grad_rel_err": max(errs)})
        out.append({"clipper": name, "calls": results, "torch_pre_norm": full_pre})
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
