"""Loss-curve verdicts (rules/divergence.py), the examples a unit verdict needs
(rules/examples.py) and the window that applies it (training/window.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import divergence, examples
from gradhealth.rules.divergence import BLOCK_STEPS, SUSTAIN_BLOCKS, Trend
from gradhealth.rules.finding import Finding
from gradhealth.training.window import AliveWindow, merge


def curve(n: int, seed: int = 0, start: float = 2.3, floor: float = 1e-3) -> np.ndarray:
    """A healthy loss: exponential decay to ``floor``, heavy-tailed minibatch noise."""
    rng = np.random.default_rng(seed)
    clean = floor + (start - floor) * np.exp(-np.arange(n) / 30)
    return clean * np.exp(rng.normal(0, 0.5, n))


def feed(trend: Trend, values, first: int = 0, window: int = 50) -> list[Finding]:
    found = []
    for a in range(0, len(values), window):
        chunk = values[a:a + window]
        found += trend.observe(range(first + a, first + a + len(chunk)), list(chunk))
    return found


def test_healthy_curves_never_diverge():
    for seed in range(5):
        assert feed(Trend(), curve(600, seed)) == []


def test_a_loss_that_leaves_its_level_for_good_is_found_with_its_onset():
    values = np.concatenate([curve(200), np.full(200, 2.3)])
    trend = Trend()
    [f] = feed(trend, values)
    assert f.kind == "divergence" and f.severity == "critical"
    assert f.evidence["onset_step"] == 200 and f.evidence["blocks_above"] == SUSTAIN_BLOCKS
    assert f.evidence["step"] == 200 + SUSTAIN_BLOCKS * BLOCK_STEPS - 1
    assert f.evidence["loss_before"] < 0.01 and f.evidence["loss_now"] == 2.3
    assert "step 200" in f.remedy and "checkpoint" in f.remedy
    assert trend.diverged and feed(trend, np.full(100, 2.3), first=400) == []  # once


def test_a_spike_it_recovers_from_is_not_divergence_and_rearms():
    base = curve(200)
    bump = np.concatenate([base, np.full(20, 3.0), np.full(100, 0.002)])
    trend = Trend()
    assert feed(trend, bump) == []
    assert len(feed(trend, np.full(80, 2.3), first=len(bump))) == 1


def test_non_finite_and_missing_losses_are_skipped():
    trend = Trend()
    assert trend.observe(range(5), [None, math.nan, math.inf, 1.0, 1.0]) == []
    assert trend.logged == 2


def test_a_run_that_never_progressed_must_rise_by_a_quarter_of_its_own_level():
    assert divergence.threshold(2.0, 2.0) == 2.5
    assert divergence.threshold(0.0, 2.0) == 0.5
    assert divergence.threshold(-1.0, -1.0) == -0.75


def test_stuck_needs_a_flat_loss_and_a_cause_and_names_chance():
    cause = Finding("vanishing", "fc0", "critical", {}, remedy="Re-initialise.",
                    message="vanishing")
    flat = Trend()
    feed(flat, np.full(divergence.STUCK_STEPS - 1, math.log(10)))
    assert divergence.stuck(flat, cause, 10, 49) is None  # not yet
    feed(flat, np.full(1, math.log(10)), first=divergence.STUCK_STEPS - 1)
    f = divergence.stuck(flat, cause, 10, 50)
    assert f is not None and f.kind == "stuck" and f.module == "fc0"
    assert f.evidence["chance"] == math.log(10) and f.remedy == "Re-initialise."
    assert "at chance, ln(10)" in f.message
    other = divergence.stuck(flat, cause, 3, 50)
    assert other is not None and "at its first level" in other.message
    learning = Trend()
    feed(learning, curve(200))
    assert divergence.stuck(learning, cause, 10, 200) is None


def test_span_counts_examples_and_never_one_sample_alone():
    assert examples.span([64, 64, 64]) == 2
    assert examples.span([256, 256]) == 2
    assert examples.span([16] * 10) == 8
    assert examples.span([16] * 3) == 3  # all there is
    assert examples.span([None, None, None]) == 2
    assert examples.span([512]) == 1 and examples.span([]) == 0


def test_a_second_look_for_a_batch_past_a_threshold_not_yet_reported():
    sat = LayerStats("act", "Sigmoid", 1, 1, True, 0, saturation=0.95)
    calm = LayerStats("act", "Sigmoid", 1, 1, True, 0, saturation=0.1)
    assert examples.second_look({"act": calm}, {"relu": 0.9}, 64, set())
    assert not examples.second_look({"act": calm}, {"relu": 0.9}, 64, {("dead_units", "relu")})
    assert not examples.second_look({"act": calm}, {"relu": 0.9}, 8, set())  # too small
    assert examples.second_look({"act": sat}, {}, 64, set())
    assert not examples.second_look({"act": sat}, {}, 64, {("saturation", "act")})
    assert not examples.second_look({"act": calm}, {"relu": 0.3}, 64, set())


def test_alive_window_decides_over_the_span_and_keeps_each_batch_alone():
    window = AliveWindow(4)

    class Call:
        def __init__(self, alive):
            self.name, self.alive = "relu", torch.tensor(alive)

    window.add([Call([True, True, False, False])], 64, 0)
    window.add([Call([True, False, False, False])], 64, 50)
    window.add([Call([False, False, False, True])], 64, 100)
    span = window.span()
    assert (span.first, span.samples, span.examples) == (50, 2, 128)
    assert float(window.dead_fractions()["relu"]) == 0.5  # units 0 and 3 alive
    assert float(window.batch_dead_fractions()["relu"]) == 0.75


def test_merge_takes_the_least_saturated_sample_of_the_span():
    def layer(sat: float, rms: float) -> dict[str, LayerStats]:
        return {"act": LayerStats("act", "Tanh", 1, 1, True, 0, saturation=sat, out_rms=rms)}
    samples = [layer(0.1, 1.0), layer(0.95, 2.0), layer(0.9, 3.0)]
    merged = merge(samples, recent=2)["act"]
    assert merged.saturation == 0.9 and merged.out_rms == 2.0
    assert merge(samples[:1])["act"].saturation == 0.1


def _observe_step_by_step(trend: Trend, steps, losses) -> list[Finding]:
    """The reference: ``Trend.observe`` as it read a window, one step at a time."""
    found = []
    for step, loss in zip(steps, losses):
        trend.last = max(trend.last, int(step))
        if loss is None or not math.isfinite(loss):
            continue
        trend.logged += 1
        if trend._first is None:
            trend._first = int(step)
        trend._block.append(float(loss))
        if len(trend._block) >= BLOCK_STEPS:
            f = trend._close(int(step))
            if f is not None:
                found.append(f)
    return found


def test_windows_as_arrays_give_the_verdicts_of_the_step_by_step_reading():
    """Windows of any length, NaN/inf/None among the losses, as lists or as arrays (NaN:
    not logged): the same blocks, findings and state as one step at a time."""
    rng = np.random.default_rng(11)
    for seed in range(20):
        n = 900
        values = np.concatenate([curve(300, seed), np.full(300, 2.3) * rng.uniform(0.5, 2.0),
                                 curve(300, seed + 1)]).tolist()
        for i in rng.integers(0, n, 60):
            values[i] = [math.nan, math.inf, -math.inf, None][int(rng.integers(4))]
        steps = np.cumsum(rng.integers(1, 3, n))
        arrays, lists, reference = Trend(), Trend(), Trend()
        found: tuple[list, list, list] = ([], [], [])
        cuts = sorted(rng.integers(0, n, 8))
        for a, b in zip([0, *cuts], [*cuts, n]):
            found[0].extend(arrays.observe(steps[a:b], np.array(values[a:b], dtype=float)))
            found[1].extend(lists.observe(steps[a:b].tolist(), values[a:b]))
            found[2].extend(_observe_step_by_step(reference, steps[a:b], values[a:b]))
        assert found[0] == found[2] and found[1] == found[2], seed
        assert arrays == reference and lists == reference, seed
    assert any(found[2])  # the plateau at 2.3 is a divergence somewhere
