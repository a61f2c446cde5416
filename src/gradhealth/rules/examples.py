"""How many examples a verdict on units (dead, saturated) needs during training.

A sampled step shows one batch. A healthy ReLU unit that fires on a fraction p of the
inputs is silent on all of N independent examples with probability (1 - p)^N: for
p = 5% that is 4% at N = 64 but 0.1% at N = 128, so a unit silent for two consecutive
sampled batches of 64 examples is not noise, while one batch alone can be. The watch
therefore decides dead units and saturation over the latest samples that together hold
``MIN_EXAMPLES`` examples, and never over fewer than ``MIN_SAMPLES`` samples (one odd
batch cannot decide alone), however large the batch (docs/science.md#sampling-window).

Latency at the defaults (a sample every 50 steps, a batch of 64 or more): a unit that
dies between two samples is reported at the second sample after its death, 50 to 100
steps later; with a batch of 16, at the eighth (``MIN_EXAMPLES`` / 16), as far as the
watch's ``window`` of samples reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_EXAMPLES = 128
"""Design choice: two batches of 64 (see the module doc: (1 - 0.05)^128 = 0.14%)."""
MIN_SAMPLES = 2
"""Design choice: one sampled batch never decides alone, whatever its size."""


def span(sizes: Sequence[int | None]) -> int:
    """How many of the latest samples (batch sizes ``sizes``, oldest first; None where
    unknown, counted as ``MIN_EXAMPLES``) a verdict rests on: the fewest, at least
    ``MIN_SAMPLES``, that hold ``MIN_EXAMPLES`` examples; all of them when even all
    together hold fewer (the start of a run, or a small batch)."""
    seen = 0
    for k, size in enumerate(reversed(sizes), start=1):
        seen += MIN_EXAMPLES if size is None else size
        if k >= MIN_SAMPLES and seen >= MIN_EXAMPLES:
            return k
    return len(sizes)
