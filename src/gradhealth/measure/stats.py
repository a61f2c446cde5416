"""Pure tensor statistics, computed on the tensor's device with no host synchronisation.

Each function returns tensors; callers decide when to copy to the host (once, at the end
of a probe or a flush window). Sums are accumulated in float32 whatever the input dtype
(the probe's ``moment_sums`` in float64), so bf16/fp16 models are measured without
overflow in the reduction itself.

How each statistic reduces across processes (for torch.distributed): the ``*_sums``
vectors below are plain sums (reduce with SUM), except the L2 norm in ``moment_sums``'
NORM slot, which combines as the root of the summed squares (``host_sums`` squares it);
``unit_alive`` is an OR (reduce with MAX).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gradhealth.measure import distributed
from gradhealth.measure.catalog import Band
from gradhealth.measure.shards import Shards

# Layout of the host vector ``host_sums`` makes of ``moment_sums``: slot SUMSQ holds the
# sum of squares on the host (a Python float), the L2 norm on the device (NORM).
N, SUM, SUMSQ, NONFINITE = 0, 1, 2, 3
NORM = SUMSQ
MOMENT_WIDTH = 4


def moment_sums(t: torch.Tensor) -> torch.Tensor:
    """[count, sum, L2 norm, non-finite count] over the finite entries of ``t``, float32.

    Non-finite entries are excluded from the moments and counted separately, so one NaN
    does not erase the layer's other numbers. The norm, not the sum of squares, crosses
    to the host: finite float32 activations of ~5e18 have squares past float32's range
    (3.4e38), so the norm is reduced in float64 and ``host_sums`` squares it in Python's
    float64 (docs/science.md#numbers-that-stay-finite).
    """
    x = t.detach().float()
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, torch.zeros((), device=x.device))
    n_finite = finite.sum(dtype=torch.float32)
    norm = torch.linalg.vector_norm(xf, dtype=torch.float64).float()
    return torch.stack(
        (n_finite, xf.sum(dtype=torch.float64).float(), norm, x.numel() - n_finite)
    )


def nonfinite_count(t: torch.Tensor) -> torch.Tensor:
    """How many entries of ``t`` are NaN or +-Inf (0-d float32 tensor, no host sync).

    ``t - t`` is 0 for every finite entry and NaN for every other, so the count is that
    difference with NaN made 1, summed: three cheap elementwise passes, where
    ``torch.isfinite`` alone is 8x slower on a CPU (measured on a 32x784 batch: 10 us
    against 63 us for ``(~isfinite(t)).sum()``). Complex tensors take ``isfinite``.
    """
    x = t.detach()
    if x.is_complex() or not x.is_floating_point():
        return (~torch.isfinite(x)).sum(dtype=torch.float32)
    return (x - x).nan_to_num_(nan=1.0).sum(dtype=torch.float32)


def host_sums(values: Sequence[float]) -> list[float]:
    """``moment_sums``' values copied to the host, with the norm squared: [count, sum, sum
    of squares, non-finite count], in Python floats (float64: 5e18^2 is finite there)."""
    return [values[N], values[SUM], values[NORM] * values[NORM], values[NONFINITE]]


def lean_sums(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, L2 norm) of ``t`` in float32: two passes over ``t``, no temporaries.

    For the sampled steps of training (``Taps(lean=True)``), where ``moment_sums``' four
    passes and three temporaries per tensor cost more than the statistic is worth. The
    two cells are left apart (``Fetch.add`` takes the pair): stacking them would be one
    more kernel per tensor. ``lean_moments`` turns the copied values into
    ``moment_sums``' layout on the host.
    """
    x = t.detach() if t.requires_grad else t  # a gradient in its hook needs none
    return x.sum(dtype=torch.float32), torch.linalg.vector_norm(x, dtype=torch.float32)


def lean_moments(values: Sequence[float], n: int) -> list[float]:
    """``moment_sums``' layout from ``lean_sums`` values of a tensor of ``n`` entries.

    Non-finite entries are not excluded: one of them makes the sum non-finite, and the
    last entry is then 1 (present) rather than the exact count. A finite sum with an
    infinite norm is finite entries whose squares passed float32's range (~5e18 and up):
    not a NaN/Inf, but a sum of squares unknown here (NaN, flag 0: ``overflowed``); the
    probe measures such a pass again in float64 (``moment_sums``).
    """
    total, norm = values
    finite = math.isfinite(total)
    sumsq = norm * norm if math.isfinite(norm) or not finite else math.nan
    return [float(n), total, sumsq, 0.0 if finite else 1.0]


def overflowed(sums: Sequence[float] | None) -> bool:
    """Host sums of finite entries whose sum of squares is unknown (``lean_moments``)."""
    if not sums:
        return False
    return sums[NONFINITE] == 0 and not math.isfinite(sums[SUMSQ])


def moments_from_sums(sums: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, std, rms) from a ``moment_sums`` vector that has been copied to the host."""
    n = sums[N]
    if n <= 0:
        return None, None, None
    mean = sums[SUM] / n
    if overflowed(sums):  # finite entries, their squares past float32: not known here
        return mean, None, None
    mean_sq = sums[SUMSQ] / n
    var = max(mean_sq - mean * mean, 0.0)
    return mean, var**0.5, mean_sq**0.5


QUANTILES = (0.02, 0.15, 0.5, 0.85, 0.98)
"""Percentiles kept per layer: the 15/50/85th of Ioffe & Szegedy 2015 (Fig. 1) and the
tails that show saturation, enough to draw Glorot & Bengio 2010's Fig. 6-7 distributions."""
QUANTILE_SAMPLE = 2048  # drawn, never judged: docs/science.md#distributions-and-quantiles
LEAN_QUANTILE_SAMPLE = 2048  # sampled training steps (Taps(lean=True)): plots, not probes


def quantiles(t: torch.Tensor, qs: Sequence[float] = QUANTILES,
              sample: int = QUANTILE_SAMPLE) -> torch.Tensor:
    """Percentiles of the finite entries of ``t`` from an evenly strided sample.

    At most ``sample`` entries are sorted, so the cost does not grow with the
    activation's size; non-finite entries are dropped (NaN percentiles if all are, or if
    ``t`` is empty).
    """
    row = quantile_rows([quantile_sample(t, sample)], qs)[0]
    return torch.full((len(qs),), float("nan"), device=t.device) if row is None else row


def quantile_sample(t: torch.Tensor, sample: int = QUANTILE_SAMPLE) -> torch.Tensor:
    """The evenly strided sample of at most ``sample`` entries of ``t`` that ``quantiles``
    sorts, as its own float32 copy (one kernel; it holds no reference to ``t``)."""
    x = (t.detach() if t.requires_grad else t).reshape(-1)
    if x.numel() > sample:
        x = x[:: x.numel() // sample][:sample]
    return x.float() if x.dtype != torch.float32 else x.clone()


def quantile_rows(samples: Sequence[torch.Tensor],
                  qs: Sequence[float] = QUANTILES) -> list[torch.Tensor | None]:
    """``quantiles`` of many ``quantile_sample``s at once: samples of one length and device
    are stacked and sorted together, a handful of kernels per group instead of per sample
    (a sampled training step takes one sample per activation module)."""
    out: list[torch.Tensor | None] = [None] * len(samples)  # None: an empty sample
    groups: dict[tuple[int, torch.device], list[int]] = {}
    for i, s in enumerate(samples):
        if s.numel():
            groups.setdefault((s.numel(), s.device), []).append(i)
    for (_, device), members in groups.items():
        x = torch.stack([samples[i] for i in members])
        if device.type == "cpu":
            rows = torch.from_numpy(_sorted_quantiles(x.numpy(), qs))
        else:
            x = torch.where(torch.isfinite(x), x, torch.full((), float("nan"), device=device))
            # (levels, samples) -> one contiguous row of levels per sample
            rows = torch.nanquantile(x, _levels(tuple(qs), device), dim=1).t().contiguous()
        for i, row in zip(members, rows.unbind(0)):
            out[i] = row
    return out


def _sorted_quantiles(x: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """``torch.nanquantile(x, qs, dim=1).t()`` (linear interpolation between the finite
    entries of each row, NaN for a row without one) on the host: numpy's sort of a few
    thousand floats per row is ~20x faster than torch's on a CPU (measured: 34 us against
    0.8 ms for 9 rows of 2,048), and a sampled training step sorts one row per module."""
    finite = np.isfinite(x)
    ordered = np.sort(np.where(finite, x, np.nan), axis=1)  # NaN last
    last = np.maximum(finite.sum(axis=1) - 1, 0)[:, None]
    # in the input's precision, as torch's: rank, its floor, and torch.lerp's two forms
    pos = np.asarray(qs, dtype=x.dtype)[None, :] * last.astype(x.dtype)
    below = np.floor(pos)
    weight = pos - below
    lo = below.astype(np.int64)
    low = np.take_along_axis(ordered, lo, axis=1)
    high = np.take_along_axis(ordered, np.minimum(lo + 1, last), axis=1)
    with np.errstate(over="ignore", invalid="ignore"):  # float32 extremes: inf, as torch
        rows = np.where(weight < 0.5, low + weight * (high - low),
                        high - (high - low) * (1 - weight))
    rows[~finite.any(axis=1)] = np.nan
    return rows.astype(x.dtype)


_LEVELS: dict[tuple[tuple[float, ...], torch.device], torch.Tensor] = {}


def _levels(qs: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The quantile levels as a tensor on ``device``, made once: a host-to-device copy of
    a new tensor would synchronise a CUDA stream on every sampled step."""
    levels = _LEVELS.get((qs, device))
    if levels is None:
        levels = _LEVELS[(qs, device)] = torch.tensor(qs, dtype=torch.float32, device=device)
    return levels


def saturated_count(t: torch.Tensor, band: Band) -> torch.Tensor:
    """How many entries of ``t`` lie in the saturated region ``band`` (0-d float tensor)."""
    x = t.detach()
    hits = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if band.low is not None:
        hits |= x <= band.low
    if band.high is not None:
        hits |= x >= band.high
    return hits.sum(dtype=torch.float32)


def unit_axis(t: torch.Tensor, channels_first: bool) -> int:
    """The axis that indexes units: features of (N, F) and (N, ..., F); channels of conv maps."""
    if t.dim() <= 1:
        return 0
    return 1 if channels_first else t.dim() - 1


def unit_alive(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Per unit along ``axis``: True when the unit is non-zero for some entry of the batch."""
    moved = (t.detach() != 0).movedim(axis, 0)
    return moved.reshape(moved.shape[0], -1).any(dim=1)


def param_norms(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor in one fused call (``torch._foreach_norm``), stacked, float32."""
    if not params:
        return torch.zeros(0)
    shards = Shards.of(params)
    if shards is not None:  # FSDP2: the full parameters' norms (one collective)
        return shards.norms(shards.local([p.detach() for p in params])).float()
    norms = torch._foreach_norm([p.detach() for p in params])
    return torch.stack([n.float() for n in norms])


def fan_in_variance(weight: torch.Tensor) -> torch.Tensor:
    """fan_in * Var(W): 1 for LeCun, 2 for He, 1/3 for torch's default Linear/Conv init."""
    if distributed.is_dtensor(weight):  # FSDP2: from the shards' sums (one collective)
        total, sumsq = distributed.value_sums(weight).unbind()
        n = weight.numel()
        fan_in = n // weight.shape[0] if weight.dim() >= 2 else n
        return (sumsq / n - (total / n) ** 2) * fan_in
    w = weight.detach().float()
    fan_in = w[0].numel() if w.dim() >= 2 else w.numel()
    return w.var(unbiased=False) * fan_in


STACK_ENTRIES = 1 << 24
"""At most this many weight entries (64 MB in float32) are stacked at once by
``fan_in_variances``: the temporary stays small next to the model it measures."""


def fan_in_variances(weights: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """``fan_in_variance`` of each weight (None for None), weights of one shape, dtype and
    device stacked (``STACK_ENTRIES`` at a time) and reduced together: a deep stack of equal
    layers costs a few kernels, not two per layer."""
    out: list[torch.Tensor | None] = [None] * len(weights)
    groups: dict[tuple, list[int]] = {}
    present: dict[int, torch.Tensor] = {}
    for i, w in enumerate(weights):
        if w is None:
            continue
        if distributed.is_dtensor(w) or w.dim() < 2:
            out[i] = fan_in_variance(w)
        else:
            present[i] = w
            groups.setdefault((tuple(w.shape), w.dtype, w.device), []).append(i)
    for (shape, _, _), members in groups.items():
        per = max(1, STACK_ENTRIES // max(1, math.prod(shape)))
        for start in range(0, len(members), per):
            chunk = members[start:start + per]
            if len(chunk) == 1:
                out[chunk[0]] = fan_in_variance(present[chunk[0]])
                continue
            w = torch.stack([present[i].detach() for i in chunk]).flatten(1).float()
            # two passes, mean then the norm of the centred rows (the rows' own ``var`` is
            # ten times slower on a CPU; E[W^2] - E[W]^2 cancels when the mean is large)
            w = w - w.mean(dim=1, keepdim=True)
            var = torch.linalg.vector_norm(w, dim=1).square() / w.shape[1]
            fans = var * math.prod(shape[1:])
            for i, v in zip(chunk, fans.unbind(0)):
                out[i] = v
    return out


def time_rms(grad: torch.Tensor, time_axis: int) -> torch.Tensor:
    """RMS of a sequence gradient per time step: shape (T,)."""
    g = grad.detach().float().movedim(time_axis, 0)
    return g.reshape(g.shape[0], -1).pow(2).mean(dim=1).sqrt()
