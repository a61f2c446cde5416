"""How many examples a verdict on units (dead, saturated) needs during training.

A sampled step shows one batch. A healthy ReLU unit that fires on a fraction p of the
inputs is silent on all of N independent examples with probability (1 - p)^N: for
p = 5% that is 4% at N = 64 but 0.1% at N = 128, so a unit silent for two consecutive
sampled batches of 64 examples is not noise, while one batch alone can be. The watch
therefore decides dead units and saturation over the latest samples that together hold
``MIN_EXAMPLES`` examples, and never over fewer than ``MIN_SAMPLES`` samples (one odd
batch cannot decide alone), however large the batch (docs/science.md#sampling-window).

A second look: when the batch just sampled shows a layer past the dead-unit or the
saturation threshold on its own that is not reported yet (``second_look``), the watch
samples again two steps later instead of waiting for the next scheduled sample; the two
batches then decide. Latency at the defaults (a sample every 50 steps, a batch of 64 or
more): a unit that dies between two samples is reported two steps after the first
sample that shows it, 2 to 52 steps after its death; with a batch of 16, after the
eighth such sample (``MIN_EXAMPLES`` / 16), as far as the watch's ``window`` reaches. The
first sample of a run is judged alone, as a probe would judge it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import dead_units, saturation

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


def second_look(layers: Mapping[str, LayerStats], batch_dead: Mapping[str, float],
                batch_size: int | None, reported: Collection[tuple[str, str]]) -> bool:
    """Whether the batch just sampled (its own ``layers`` statistics and each rectifier's
    dead fraction on it alone) shows a layer past the dead-unit or saturation threshold
    that is not among the ``reported`` (kind, module) pairs: one batch cannot condemn it,
    so look again at once."""
    if batch_size is not None and batch_size < dead_units.MIN_BATCH:
        return False
    dead = any(v is not None and v > dead_units.DEAD_FRACTION
               and ("dead_units", name) not in reported for name, v in batch_dead.items())
    saturated = any(s.saturation is not None and s.saturation > saturation.SATURATION_FRACTION
                    for s in layers.values()) and not any(k == "saturation" for k, _ in reported)
    return dead or saturated
