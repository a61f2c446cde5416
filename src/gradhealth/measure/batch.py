"""Non-finite entries of a batch: which argument, how many, where.

A NaN or Inf in the data reaches every module, and each of them only passes it on, so
before a module is blamed the batch itself is looked at: each floating tensor of the
inputs (named as the caller knows it: ``inputs[1]``, ``x``, ``batch['ids']``) and of the
targets. ``named`` lists the tensors; ``counts`` queues one count per tensor on the
device (no host synchronisation: a sampled training step); ``nonfinite`` describes the
bad ones on the host (a failure path only: it synchronises).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from gradhealth.measure import stats

MAX_POSITIONS = 5
"""Positions listed per argument: enough to find the bad example in a batch."""
_MAX_DEPTH = 4


def named(value: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """The floating tensors in ``value`` (a tensor, or tuples, lists and dicts of them),
    each with its path from ``name``: ``name``, ``name[1]``, ``name['ids']``."""
    out: list[tuple[str, torch.Tensor]] = []
    _walk(value, name, out, 0)
    return out


def parameter_names(forward: Callable) -> list[str]:
    """The names of ``forward``'s positional parameters (empty when it has no signature)."""
    try:
        return [p.name for p in inspect.signature(forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # no signature to read: positions stand in
        return []


def arguments(params: list[str], args: tuple,
              kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The floating tensors of a call ``forward(*args, **kwargs)``, named after the
    forward's parameters ``params`` (``parameter_names``: ``x``; ``args[2]`` past them)."""
    out: list[tuple[str, torch.Tensor]] = []
    for i, value in enumerate(args):
        _walk(value, params[i] if i < len(params) else f"args[{i}]", out, 0)
    for key, value in kwargs.items():
        _walk(value, key, out, 0)
    return out


def _walk(value: Any, path: str, out: list[tuple[str, torch.Tensor]], depth: int) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            out.append((path, value))
    elif depth < _MAX_DEPTH and isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]", out, depth + 1)
    elif depth < _MAX_DEPTH and isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{path}[{k!r}]", out, depth + 1)


def counts(tensors: list[tuple[str, torch.Tensor]]) -> torch.Tensor | None:
    """Non-finite entries per tensor, one device vector (float32), no synchronisation."""
    if not tensors:
        return None
    return torch.stack([stats.nonfinite_count(t).to(tensors[0][1].device) for _, t in tensors])


def nonfinite(tensors: list[tuple[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Each tensor holding NaN or Inf: its name, shape, counts and first positions
    (evidence for ``rules.nonfinite``)."""
    bad = []
    for name, t in tensors:
        t = t.detach()
        mask = ~torch.isfinite(t)
        if not bool(mask.any()):
            continue
        nan = int(torch.isnan(t).sum())
        first = (torch.nonzero(mask)[:MAX_POSITIONS].tolist() if t.dim() else [])
        bad.append({"argument": name, "shape": list(t.shape), "numel": t.numel(),
                    "count": int(mask.sum()), "nan": nan, "inf": int(mask.sum()) - nan,
                    "first": first})
    return bad

