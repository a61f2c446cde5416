"""Norms of tensors split across processes (FSDP2 DTensors), from their local shards.

``Shards`` turns per-tensor norms of the local shards into norms of the full tensors, one
collective per distinct set of shard groups; ``local_norms`` is the fused per-tensor norm
those start from. How each statistic reduces is declared in
``gradhealth.measure.distributed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, overload

import torch
from torch import Tensor

from gradhealth.measure.distributed import (
    GroupKey,
    is_dtensor,
    local_shard,
    reduce_max_,
    reduce_sum_,
    shard_groups,
)


class Shards:
    """How to turn norms of local shards into norms of full tensors, for one fixed list.

    ``Shards.of(tensors)`` is None when no tensor is a DTensor (one process, or DDP):
    then the local norms are the global ones and nothing is reduced.
    """

    def __init__(self, keys: list[GroupKey]):
        self.keys = keys
        by_key: dict[GroupKey, list[int]] = {}
        for i, key in enumerate(keys):
            if key:
                by_key.setdefault(key, []).append(i)
        self._subsets = list(by_key.items())
        self._whole = len(self._subsets) == 1 and len(self._subsets[0][1]) == len(keys)
        self._index: dict[tuple[GroupKey, torch.device], Tensor] = {}

    @classmethod
    def of(cls, tensors: Sequence[Tensor | None]) -> Shards | None:
        if not any(is_dtensor(t) for t in tensors):
            return None
        return cls([shard_groups(t) if t is not None else () for t in tensors])

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    @staticmethod
    def local(tensors: Sequence[Tensor]) -> list[Tensor]: ...
    @overload
    @staticmethod
    def local(tensors: Sequence[Tensor | None]) -> list[Tensor | None]: ...
    @staticmethod
    def local(tensors: Sequence[Tensor | None]) -> list[Any]:  # the overloads say which
        """Each tensor's local shard (plain tensors as they are)."""
        with torch.no_grad():
            return [local_shard(t) for t in tensors]

    def full_norms_(self, norms: Tensor, norm_type: float = 2.0) -> Tensor:
        """Per-tensor norms of the local shards (plan order) -> of the full tensors, in place.

        One collective per distinct set of shard groups (one under plain FSDP2), whatever
        the number of tensors; tensors without Shard placements are left as they are.
        """
        if not self._subsets:
            return norms
        inf = math.isinf(norm_type)
        if not inf:
            norms.pow_(norm_type)
        for key, idx in self._subsets:
            part = norms if self._whole else norms.index_select(0, self._indices(key, idx, norms))
            for group in key:
                (reduce_max_ if inf else reduce_sum_)(part, group)
            if not self._whole:
                norms.index_copy_(0, self._indices(key, idx, norms), part)
        if not inf:
            norms.pow_(1.0 / norm_type)
        return norms

    def norms(self, local: Sequence[Tensor | None], norm_type: float = 2.0) -> Tensor:
        """Full norm of each tensor (0 where None), float32 (float64 if any tensor is),
        from the local shards ``local`` (``Shards.local``) in plan order."""
        full = local_norms(local, norm_type)
        return self.full_norms_(full, norm_type)

    def unit_norms(self, tensors: Sequence[Tensor], unit_dims: Sequence[int]) -> list[Tensor]:
        """AGC's unit-wise L2 norms (keepdim) of full tensors, from DTensors or plain ones.

        A unit (all dims but ``unit_dim``) split by a shard gets its squared pieces summed;
        all such units go in one vector per set of groups (one collective).
        """
        out: list[Tensor] = []
        pending: dict[GroupKey, list[int]] = {}
        for i, (t, unit_dim) in enumerate(zip(tensors, unit_dims)):
            local = local_shard(t)
            if local.ndim <= 1:
                n = torch.linalg.vector_norm(local, dtype=torch.float32)
            else:
                dims = tuple(d for d in range(local.ndim) if d != unit_dim)
                n = torch.linalg.vector_norm(local, dim=dims, keepdim=True, dtype=torch.float32)
            out.append(n)
            key = shard_groups(t, unit_dim)
            if key:
                pending.setdefault(key, []).append(i)
        for key, idx in pending.items():
            flat = torch.cat([out[i].reshape(-1) for i in idx]).square_()
            for group in key:
                reduce_sum_(flat, group)
            pieces = flat.sqrt_().split([out[i].numel() for i in idx])
            for i, piece in zip(idx, pieces):
                out[i] = piece.view_as(out[i])
        return out

    def _indices(self, key: GroupKey, idx: list[int], like: Tensor) -> Tensor:
        cached = self._index.get((key, like.device))
        if cached is None:
            cached = torch.tensor(idx, dtype=torch.long, device=like.device)
            self._index[(key, like.device)] = cached
        return cached


def local_norms(tensors: Sequence[Tensor | None], norm_type: float = 2.0) -> Tensor:
    """Norm of each (local, plain) tensor in input order, fused per device and dtype; 0
    for None and for empty tensors (a rank's shard of a small parameter can be empty)."""
    present = [t for t in tensors if t is not None]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in present) else torch.float32
    device = present[0].device if present else torch.device("cpu")
    zero = torch.zeros((), dtype=dtype, device=device)
    values = [zero] * len(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        if t is not None and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(i)
    for (_, kind), idx in groups.items():
        half = kind in (torch.float16, torch.bfloat16)
        group = [t for i in idx if (t := tensors[i]) is not None]  # all of them: see above
        got = torch._foreach_norm(group, norm_type, dtype=torch.float32 if half else None)
        for i, n in zip(idx, got):
            values[i] = n.to(device, dtype, non_blocking=True)
    return torch.stack(values)  # no index tensor built on the host
