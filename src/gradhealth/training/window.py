"""Judge a window of sampled steps, not one batch.

``gh.watch`` measures activations on one step every K; the probe's rules then run on
the last ``WINDOW_SAMPLES`` sampled steps merged into one set of per-module numbers:
each statistic is the median over the samples (one odd batch cannot raise or silence a
finding alone), except dead units: a unit is dead when it is zero for every example of
*every* sampled batch of the window (a healthy deep ReLU net shows ~12% batch-constant
zeros on one batch of 256, far fewer across several batches;
docs/science.md#sampling-window). Non-finite counts and structure come from the latest
sample.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from gradhealth.measure.layer import LayerStats
from gradhealth.measure.taps import Call

WINDOW_SAMPLES = 4
"""Design choice: with the default sample_every=50, four samples span 200 steps, long
enough that one odd batch cannot decide, short enough to follow training."""

MEDIAN_FIELDS = ("out_mean", "out_std", "out_rms", "grad_rms", "grad_norm", "weight_norm",
                 "weight_grad_norm", "grad_to_weight", "weight_var_fan_in", "saturation",
                 "dead_fraction")


def merge(samples: Sequence[Mapping[str, LayerStats]],
          dead: Mapping[str, float] | None = None) -> dict[str, LayerStats]:
    """One ``LayerStats`` per module of the latest sample, medians over all ``samples``.

    ``dead`` (module -> fraction of units dead across the whole window) replaces the
    per-sample dead fraction where given.
    """
    if not samples:
        return {}
    latest = samples[-1]
    merged = {}
    for name, s in latest.items():
        changes: dict[str, Any] = {}
        if len(samples) > 1:
            for f in MEDIAN_FIELDS:
                values = [getattr(smp[name], f) for smp in samples if name in smp]
                finite = [v for v in values if v is not None and math.isfinite(v)]
                if finite:
                    changes[f] = statistics.median(finite)
        if dead is not None and name in dead:
            changes["dead_fraction"] = dead[name]
        merged[name] = replace(s, **changes) if changes else s
    return merged


class AliveWindow:
    """Per rectifier module, which units were non-zero somewhere in the last few samples.

    Holds device boolean vectors (one per sample and module); ``dead_fractions`` returns
    device tensors for the caller to copy with its other numbers.
    """

    def __init__(self, samples: int = WINDOW_SAMPLES):
        self._masks: deque[dict[str, torch.Tensor]] = deque(maxlen=samples)

    def add(self, calls: Sequence[Call]) -> None:
        alive: dict[str, torch.Tensor] = {}
        for call in calls:
            if call.alive is None:
                continue
            seen = alive.get(call.name)
            if seen is None:
                alive[call.name] = call.alive
            elif seen.shape == call.alive.shape:
                alive[call.name] = seen | call.alive
        self._masks.append(alive)

    def dead_fractions(self) -> dict[str, torch.Tensor]:
        union: dict[str, torch.Tensor] = {}
        for masks in self._masks:
            for name, alive in masks.items():
                seen = union.get(name)
                union[name] = alive if seen is None or seen.shape != alive.shape else seen | alive
        return {name: 1.0 - alive.float().mean() for name, alive in union.items()}
