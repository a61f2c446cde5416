"""Many tensors' L2 norms in one fused call, read back per group on the host.

A probe needs the weight norm and the weight-gradient norm of every module: one
``torch._foreach_norm`` (``stats.param_norms``) over all of them and one slot of the
``Fetch``, instead of a fused call, a stack and a norm per module (hundreds of small
kernels on a ResNet-50).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradhealth.measure import stats
from gradhealth.measure.fetch import Fetch

NormRef = tuple[int, int, int]
"""(slot of ``pooled_norms``' vector, first, end): one unit's tensors' norms in it."""


def pooled_norms(fetch: Fetch, groups: Sequence[Sequence[torch.Tensor]]) -> list[NormRef | None]:
    """The L2 norms of every tensor of every group in one fused call and one slot of
    ``fetch`` (``stats.param_norms``), and each group's place in it (None: an empty group):
    ``pooled_norm`` reads a group's joint norm back on the host."""
    flat = [t for group in groups for t in group]
    if not flat:
        return [None] * len(groups)
    slot = fetch.add(stats.param_norms(flat))
    assert slot is not None  # a tensor was added
    refs: list[NormRef | None] = []
    start = 0
    for group in groups:
        refs.append((slot, start, start + len(group)) if group else None)
        start += len(group)
    return refs


def pooled_norm(fetch: Fetch, ref: NormRef | int | None) -> float | None:
    """The joint L2 norm of a ``pooled_norms`` group (or a plain slot's scalar)."""
    if ref is None or isinstance(ref, int):
        return fetch.scalar(ref)
    values = fetch.get(ref[0])
    assert values is not None  # pooled_norms added it
    return math.sqrt(sum(v * v for v in values[ref[1]:ref[2]]))
