"""The process group as gradhealth sees it: who we are, and how each statistic reduces.

Launched with ``torchrun``, every rank runs the same watch, guard and clipper. The
helpers here return their input unchanged when ``torch.distributed`` is not initialised
(or the world has one process), so single-process code pays nothing.

**How each statistic reduces** (a global norm is a global norm: docs/architecture.md#processes)

====================================  ==============================================
statistic                             reduction across ranks
====================================  ==============================================
per-parameter gradient norm (L2)      DTensor (FSDP2 ``fully_shard``, HSDP): the
                                      squared norms of the local shards summed over the
                                      mesh dimensions with a ``Shard`` placement only,
                                      all parameters in one vector, one collective;
                                      ``Replicate`` dimensions are not summed (a
                                      replicated parameter counts once). Plain tensors
                                      (DDP, whose gradients are already all-reduced and
                                      identical on every rank): none, the local norm is
                                      the global norm (summing would double-count).
per-parameter p-norm / inf-norm       |x|^p summed as above; the inf-norm by MAX
global gradient norm                  derived from the per-parameter norms (no collective)
update and weight norms (sampled)     as the per-parameter gradient norm
clip pre-norm, clip factor            from the global norm: identical on every rank
AGC unit norms                        units split by a shard: squares summed, all such
                                      units in one vector (one collective)
sampled weight norm, fan_in * Var(W)  from the shards' sum and sum of squares (SUM)
"clipping bound" flags                MAX over ranks (any rank clipped)
guard skip decision                   MAX over all ranks (``agree``): one skip skips all
NaN/Inf producer (guard's verdict)    each rank's own (a rank whose step was finite
                                      has none), gathered on a step agreed non-finite
                                      only (``gather``, one collective): the store keeps
                                      the verdict of a rank that saw it, with its rank
loss                                  none: each rank's own micro-batch loss
activation statistics (sampled)       none: each rank's own micro-batch (see below)
run store                             written by rank 0 only
====================================  ==============================================

Activation statistics are not reduced: their quantiles and per-unit dead masks have no
cheap sufficient statistic, and a collective over the tapped calls would hang when
data-dependent control flow makes ranks tap different calls. The store holds rank 0's.

Other DTensor layouts (tensor parallel) follow the same rule, by placement, but are not
tested; a ``Partial`` placement (a pending sum) is made whole first (``redistribute``,
one collective per such tensor). Sharding that does not use DTensors (FSDP1's flat
parameters, ZeRO) is not recognised: its shards would be taken for replicated tensors.

MAX over ranks of a float does not keep a NaN on every backend (gloo's result depends
on the order of the ranks' values), so a non-finite value is sent as +inf in MAX
reductions: a NaN inf-norm comes back as inf on every rank, still non-finite.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar, overload

import torch
import torch.distributed as dist
from torch import Tensor, nn

if TYPE_CHECKING:  # the class only: importing torch.distributed.tensor costs at run time
    from torch.distributed.tensor import DTensor

__all__ = ["agree", "describe", "gather", "is_distributed", "is_dtensor", "is_rank_zero",
           "local_shard", "rank", "reduce_max_", "reduce_sum_", "shard_groups", "value_sums",
           "world"]

T = TypeVar("T", bound=Tensor)
Flag = TypeVar("Flag", bool, int)
Obj = TypeVar("Obj")
GroupKey = tuple  # the process groups of a tensor's Shard mesh dimensions, in mesh order


def world(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_distributed() -> bool:
    return world() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_rank_zero() -> bool:
    return rank() == 0


def reduce_sum_(t: T, group: dist.ProcessGroup | None = None) -> T:
    """All-reduce SUM in place over ``group`` (the world by default); returns ``t``."""
    if world(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def reduce_max_(t: T, group: dist.ProcessGroup | None = None) -> T:
    """All-reduce MAX in place; non-finite floats are sent as +inf (see the module doc)."""
    if world(group) > 1:
        if t.is_floating_point():
            t.nan_to_num_(nan=math.inf)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def agree(flag: Flag, device: torch.device | None = None) -> Flag:
    """The largest ``flag`` over all ranks, so that every rank takes the same decision.

    One collective (and one host synchronisation); ``flag`` unchanged on one process.
    ``device``: where the collective runs (the backend's: CUDA for NCCL); by default
    the current CUDA device under NCCL, else the CPU.
    """
    if world() == 1:
        return flag
    if device is None:
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
    t = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return type(flag)(t.item())


def gather(obj: Obj) -> list[Obj]:
    """Every rank's ``obj`` (picklable, small), in rank order: one ``all_gather_object``,
    which every rank must call; ``[obj]`` on one process."""
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def describe(sharded: bool) -> dict[str, Any]:
    """What a watched run's numbers mean across processes (the store's ``processes``)."""
    if world() == 1:
        return {"world": 1}
    return {"world": world(), "backend": str(dist.get_backend()), "store_written_by_rank": 0,
            "parameters": ("sharded (DTensor): norms reduced over the shard groups" if sharded
                           else "replicated (e.g. DDP): local norms are the global norms"),
            "loss": "rank 0's own micro-batch", "activations": "rank 0's own micro-batch"}


def collective_forward(model: nn.Module) -> bool:
    """True when ``model``'s forward itself runs collectives (FSDP2 all-gathers its
    parameters): it must not be replayed on one rank alone."""
    return any(is_dtensor(p) for p in model.parameters())


def is_dtensor(t: object) -> TypeGuard[DTensor]:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2 parameters and gradients)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@overload
def local_shard(t: Tensor) -> Tensor: ...
@overload
def local_shard(t: None) -> None: ...
def local_shard(t: Tensor | None) -> Tensor | None:
    """The shard this rank holds; a partial gradient is made whole first (a collective)."""
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(t, DTensor):
        return t
    if any(p.is_partial() for p in t.placements):
        t = t.redistribute(t.device_mesh, [Replicate() if p.is_partial() else p
                                           for p in t.placements])
    return t.to_local()


def value_sums(t: Tensor) -> Tensor:
    """(sum, sum of squares) of all of ``t``'s values, float32, from this rank's shard:
    sufficient statistics, summed over the shard groups (one collective; none for a
    plain tensor)."""
    local = local_shard(t).detach().float()
    sums = torch.stack((local.sum(), local.square().sum()))
    for group in shard_groups(t):
        reduce_sum_(sums, group)
    return sums


def shard_groups(t: Tensor, unit_dim: int | None = None) -> GroupKey:
    """Process groups of the mesh dimensions over which ``t``'s values are split.

    With ``unit_dim`` (AGC), a dimension that shards tensor dim ``unit_dim`` does not
    split a unit, so it is left out (a 0-d/1-d tensor is one unit: never left out).
    """
    if not is_dtensor(t):
        return ()
    groups = []
    for i, p in enumerate(t.placements):
        if not p.is_shard():
            # Replicate: every rank of this mesh dimension holds the same values; Partial:
            # made whole by ``local_shard`` before any norm is taken
            continue
        if unit_dim is not None and t.dim() > 1 and getattr(p, "dim", None) == unit_dim:
            continue
        groups.append(t.device_mesh.get_group(i))
    return tuple(groups)
