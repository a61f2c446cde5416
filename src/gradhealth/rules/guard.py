"""The guard's verdict on one step: let it through, or skip it (and why).

A step is skipped when its global gradient norm or its loss is non-finite, or when the
spike rule (``rules.spike``) fires on a series the policy guards. After
``MAX_CONSECUTIVE_SKIPS`` spike skips in a row the level has changed rather than spiked
(a learning-rate change, a new data mix): the next spiking step is let through, with a
finding, so the guard never freezes training for good (docs/science.md#the-guard).

Pure functions of host-side numbers; ``gradhealth.training.guard`` reads the numbers off
the device (the one host synchronisation per guarded step) and makes every process
agree on the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy
from gradhealth.rules.spike import Spike

MAX_CONSECUTIVE_SKIPS = 10
"""Design choice: ten spike skips in a row mean the norm's level moved, not spiked."""

REASONS = (None, "spike", "nonfinite")
"""Skip reasons in rising order: a non-finite step on any process outranks a spike."""


def verdict(global_norm: float, loss: float | None, spikes: Sequence[Spike], *,
            norm_spikes: bool = True, loss_spikes: bool = True, in_a_row: int = 0,
            max_consecutive: int = MAX_CONSECUTIVE_SKIPS) -> tuple[str | None, bool]:
    """``(reason, released)``: why to skip the step (None: let it through), and whether a
    spike was let through because ``in_a_row`` spike skips preceded it.

    ``spikes``: what the spike rule found at this step; ``norm_spikes``/``loss_spikes``:
    which series the policy guards.
    """
    if not math.isfinite(global_norm) or (loss is not None and not math.isfinite(loss)):
        return "nonfinite", False
    guarded = [s for s in spikes if (s.series == "global_norm" and norm_spikes)
               or (s.series == "loss" and loss_spikes)]
    if not guarded:
        return None, False
    if in_a_row >= max_consecutive:
        return None, True
    return "spike", False


def released(step: int, n: int) -> Finding:
    """The finding for a spike let through after ``n`` spike skips in a row."""
    return Finding(
        kind="spike", module="", severity="warning",
        evidence={"step": step, "consecutive_skips": n},
        prescription=Remedy("release", params={"step": step, "skips": n}),
        message=f"step {step}: {n} spike skips in a row; the guard let this step through")
