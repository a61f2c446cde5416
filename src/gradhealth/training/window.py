"""Judge a window of sampled steps, not one batch.

``gh.watch`` measures activations on one step every K; the probe's rules then run on
the last ``WINDOW_SAMPLES`` sampled steps merged into one set of per-module numbers:
each statistic is the median over the samples (one odd batch cannot raise or silence a
finding alone), except the two that say a unit is stuck, dead units and saturation. They
are decided by the number of *examples* seen (``rules.examples``): over the latest samples
that hold at least ``examples.MIN_EXAMPLES`` examples (and at least ``examples.MIN_SAMPLES``
samples), a unit is dead when it is zero for every example of every one of them (the
union of "alive" masks, an OR), and a layer is saturated as far as its least saturated
sample of them says (a minimum). At the default 50 steps a sample and a batch of 64,
that is two samples: a death is reported at the second sample after it, not the fifth
(docs/science.md#sampling-window). Non-finite counts and structure come from the latest
sample.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradhealth.measure.layer import LayerStats
from gradhealth.measure.taps import Call
from gradhealth.rules.examples import span as examples_span

WINDOW_SAMPLES = 4
"""Design choice: with the default sample_every=50, four samples span 200 steps, long
enough that one odd batch cannot decide, short enough to follow training."""

MEDIAN_FIELDS = ("out_mean", "out_std", "out_rms", "grad_rms", "grad_norm", "weight_norm",
                 "weight_grad_norm", "grad_to_weight", "weight_var_fan_in", "dead_fraction")


@dataclass(frozen=True)
class Span:
    """The samples a dead-unit or saturation verdict rests on: the first one's step, how
    many, and how many examples they held together (None where a batch size is unknown)."""

    first: int | None
    samples: int
    examples: int | None

    def meta(self) -> dict[str, Any]:
        return {"span_first": self.first, "span_samples": self.samples,
                "span_examples": self.examples}


def merge(samples: Sequence[Mapping[str, LayerStats]],
          dead: Mapping[str, float] | None = None, recent: int | None = None
          ) -> dict[str, LayerStats]:
    """One ``LayerStats`` per module of the latest sample, medians over all ``samples``.

    ``dead`` (module -> fraction of units dead across the span) replaces the per-sample
    dead fraction where given. ``recent``: how many of the latest samples the saturation
    verdict rests on (``examples.span``; all of them when None): the smallest saturation
    among them, so a layer is saturated only if every batch of the span was.
    """
    if not samples:
        return {}
    latest = samples[-1]
    tail = list(samples)[-recent:] if recent else list(samples)
    merged = {}
    for name, s in latest.items():
        changes: dict[str, Any] = {}
        if len(samples) > 1:
            for f in MEDIAN_FIELDS:
                values = [getattr(smp[name], f) for smp in samples if name in smp]
                finite = [v for v in values if v is not None and math.isfinite(v)]
                if finite:
                    changes[f] = statistics.median(finite)
        if len(tail) > 1:
            sat = [smp[name].saturation for smp in tail if name in smp]
            finite = [v for v in sat if v is not None and math.isfinite(v)]
            if finite:
                changes["saturation"] = min(finite)
        if dead is not None and name in dead:
            changes["dead_fraction"] = dead[name]
        merged[name] = s.replaced(**changes) if changes else s
    return merged


class AliveWindow:
    """Per rectifier module, which units were non-zero somewhere in the latest samples.

    Holds device boolean vectors (one per sample and module) with each sample's step and
    batch size; ``dead_fractions`` returns device tensors for the caller to copy with its
    other numbers, over the span ``examples.span`` picks.
    """

    def __init__(self, samples: int = WINDOW_SAMPLES):
        self._masks: deque[tuple[int | None, int | None, dict[str, torch.Tensor]]] = deque(
            maxlen=samples)

    def add(self, calls: Sequence[Call], examples: int | None = None,
            step: int | None = None) -> None:
        alive: dict[str, torch.Tensor] = {}
        for call in calls:
            if call.alive is None:
                continue
            seen = alive.get(call.name)
            if seen is None:
                alive[call.name] = call.alive
            elif seen.shape == call.alive.shape:
                alive[call.name] = seen | call.alive
        self._masks.append((step, examples, alive))

    def span(self) -> Span:
        """The latest samples a verdict rests on now."""
        sizes = [examples for _, examples, _ in self._masks]
        n = examples_span(sizes)
        tail = list(self._masks)[-n:] if n else []
        known = [e for e in sizes[-n:] if e is not None] if n else []
        return Span(tail[0][0] if tail else None, n,
                    sum(known) if n and len(known) == n else None)

    def batch_dead_fractions(self) -> dict[str, torch.Tensor]:
        """Per module, the fraction of units zero for the whole latest batch alone."""
        if not self._masks:
            return {}
        return {name: 1.0 - alive.float().mean() for name, alive in self._masks[-1][2].items()}

    def dead_fractions(self) -> dict[str, torch.Tensor]:
        n = self.span().samples
        union: dict[str, torch.Tensor] = {}
        for _, _, masks in list(self._masks)[-n:] if n else []:
            for name, alive in masks.items():
                seen = union.get(name)
                union[name] = alive if seen is None or seen.shape != alive.shape else seen | alive
        return {name: 1.0 - alive.float().mean() for name, alive in union.items()}
