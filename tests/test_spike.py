"""The spike rule: EMA z-score of a host-side series, pure functions."""

from __future__ import annotations

import math

import numpy as np

from gradhealth.rules import spike
from gradhealth.rules.spike import Config, Detector, SpikeState, blame, detect, update


def noisy(n: int, seed: int = 0, level: float = 1.0, sigma: float = 0.05) -> np.ndarray:
    return level * np.exp(np.random.default_rng(seed).normal(0.0, sigma, n))


def test_warm_up_decides_nothing_then_starts_from_mean_and_variance():
    state = SpikeState()
    values = [1.0, 2.0, 3.0] * 10
    for i, v in enumerate(values[:spike.WARMUP_STEPS]):
        state, z = update(state, v)
        assert z is None, i
    assert state.seen == spike.WARMUP_STEPS
    warm = values[:spike.WARMUP_STEPS]
    assert math.isclose(state.mean, np.mean(warm)) and math.isclose(state.var, np.var(warm))
    state, z = update(state, 2.0)
    assert z is not None and abs(z) < 1


def test_noise_is_quiet_and_an_injected_spike_is_found():
    values = noisy(600)
    assert detect("global_norm", range(600), values, SpikeState())[0] == []
    values[400] *= 10
    found, _ = detect("global_norm", range(600), values, SpikeState())
    assert [s.step for s in found] == [400]
    s = found[0]
    assert s.z > spike.Z_THRESHOLD and s.series == "global_norm" and 0.9 < s.mean < 1.1
    assert s.threshold == spike.Z_THRESHOLD


def test_falls_never_count_and_non_finite_values_leave_the_state_alone():
    values = noisy(100)
    values[60] = 1e-6  # a collapse is not a spike
    found, state = detect("loss", range(100), values, SpikeState())
    assert found == []
    after, z = update(state, math.nan)
    assert after == state and z is None
    after, z = update(state, math.inf)
    assert after == state and z is None


def test_a_flat_series_needs_a_real_rise():
    flat = np.full(60, 2.0)
    base = detect("loss", range(60), flat, SpikeState())[1]
    assert detect("loss", [60], [2.04], base)[0] == []  # +2%: under the 1% std floor x 6
    assert len(detect("loss", [60], [2.2], base)[0]) == 1  # +10%: z = 10


def test_a_lasting_level_change_is_absorbed():
    values = np.concatenate([noisy(100), noisy(200, seed=1, level=3.0)])
    found, _ = detect("global_norm", range(300), values, SpikeState())
    assert found and all(100 <= s.step < 160 for s in found), [s.step for s in found]


def test_the_spike_does_not_blind_the_detector_to_the_next():
    values = noisy(200)
    values[100] = values[103] = 50.0
    found, _ = detect("global_norm", range(200), values, SpikeState())
    assert [s.step for s in found] == [100, 103]


def test_config_threshold_and_detector_per_series():
    det = Detector(Config(z_threshold=3.0, warmup=10))
    values = noisy(40, sigma=0.1)
    values[30] = values[29] * 1.6  # z ~ 6: found at 3 sigma, not at the default 6
    found = []
    for i, v in enumerate(values):
        found += det.observe(i, {"global_norm": float(v), "loss": None})
    assert [s.step for s in found] == [30] and found[0].threshold == 3.0
    assert det.states["loss"] == SpikeState()  # never logged, never touched


def test_blame_names_the_module_that_rose_most():
    rng = np.random.default_rng(0)
    norms = 1.0 + 0.01 * rng.standard_normal((10, 3))
    norms[7] = [1.0, 40.0, 2.0]
    assert blame(norms, 7, ["a", "b", "c"])[0] == "b"
    assert math.isclose(blame(norms, 7, ["a", "b", "c"])[1], 40.0, rel_tol=0.05)
    assert blame(norms[:1], 0, ["a", "b", "c"]) is None  # nothing to compare with


def test_one_finding_per_step_with_evidence_and_remedy():
    norm = spike.Spike("global_norm", 12, 9.0, 1.0, 0.1, 80.0)
    loss = spike.Spike("loss", 12, 50.0, 2.0, 0.2, 240.0)
    f = spike.finding([norm, loss], ("fc2", 35.0), skipped=True)
    assert f.kind == "spike" and f.module == "fc2" and f.severity == "warning"
    assert f.evidence["series"] == ["global_norm", "loss"] and f.evidence["step"] == 12
    assert f.evidence["global_norm_z"] == 80.0 and f.evidence["loss_z"] == 240.0
    assert f.evidence["threshold"] == spike.Z_THRESHOLD and f.evidence["skipped"] is True
    assert f.evidence["module_ratio_to_median"] == 35.0
    assert "step 12" in f.remedy and "ZClip" in f.remedy and "skipped" in f.message
    only_loss = spike.finding([spike.Spike("loss", 3, 5.0, 1.0, 0.1, 40.0)])
    assert only_loss.module == "" and only_loss.modules == () and "loss" in only_loss.message


def test_the_long_term_level_remembers_the_run_before_its_norm_shrank():
    values = np.concatenate([noisy(200, level=3.0), noisy(400, seed=1, level=0.05)])
    _, state = detect("global_norm", range(600), values, SpikeState())
    assert 0.04 < state.mean < 0.06  # the short EMA follows the shrunken norm
    assert state.peak > 2.5  # the long-term level remembers the ordinary step of the run
    values = np.append(values, 1.0)  # z ~ 100 over the EMA, a third of the run's level
    [found], _ = detect("global_norm", range(601), values, SpikeState())
    assert found.z > 50 and found.scale < 1
    f = spike.finding([found])
    assert f.severity == "info" and "information" in f.message
    assert f.evidence["global_norm_level"] == found.level


def test_a_spike_is_a_warning_at_ten_times_the_level_unclipped_and_harming_the_loss():
    big = spike.Spike("global_norm", 9, 600.0, 0.2, 0.05, 100.0, level=2.0)
    small = spike.Spike("global_norm", 9, 4.4, 0.3, 0.05, 8.5, level=2.0)
    unknown = spike.Spike("global_norm", 9, 9.0, 1.0, 0.1, 80.0)  # no level yet
    assert big.scale == 300.0 and math.isnan(unknown.scale)
    assert spike.matters([big]) and spike.matters([unknown]) and not spike.matters([small])
    assert not spike.matters([big], clipped=True)
    assert not spike.matters([big], loss_rose=False) and spike.matters([big], loss_rose=True)
    before, after = [0.01] * 10, [2.3] * 10
    assert spike.rose(before, after, 2.3) is True
    assert spike.rose(before, [0.02] * 10, 2.3) is False  # 2x a tiny loss: no harm that lasts
    assert spike.rose([], after, 2.3) is None and spike.rose(before, [], None) is None
    harm = spike.finding([big], around=(before, after), initial=2.3)
    assert harm.severity == "warning" and harm.evidence["loss_after"] == 2.3
    assert "300x the run's long-term level" in harm.message
    calm = spike.finding([big], around=(before, [0.011] * 10), initial=2.3)
    assert calm.severity == "info" and "did not rise" in calm.message
    clipped = spike.finding([big], clipped=True)
    assert clipped.severity == "info" and clipped.evidence["clipped"]
    # clip advice is scaled to the run's level, not to the shrunken EMA
    assert "c from 1 to 20" in harm.remedy


def _folded(series, steps, values, state):
    """The reference: ``update`` folded over the values, one state object per step."""
    found = []
    for step, value in zip(steps, values):
        before = state
        state, z = update(state, float(value))
        if z is not None and z > spike.Z_THRESHOLD:
            std = max(math.sqrt(before.var), spike.STD_FLOOR * abs(before.mean))
            found.append(spike.Spike(series, step, float(value), before.mean, std, z,
                                     spike.Z_THRESHOLD, before.peak))
    return found, state


def test_detect_equals_update_folded_over_any_split_of_the_series():
    rng = np.random.default_rng(3)
    for seed in range(20):
        values = noisy(300, seed, sigma=0.3)
        values[rng.integers(0, 300, 6)] *= rng.uniform(5, 200, 6)  # spikes
        values[rng.integers(0, 300, 4)] = rng.choice([np.nan, np.inf, -np.inf], 4)
        cut = sorted(rng.integers(0, 300, 3))  # windows of any length, across the warm-up
        state, found = SpikeState(), []
        for a, b in zip([0, *cut], [*cut, 300]):
            more, state = detect("global_norm", range(a, b), values[a:b], state)
            found += more
        expected, expected_state = _folded("global_norm", range(300), values, SpikeState())
        assert found == expected and state == expected_state, seed
        assert len(expected) >= 1, seed  # the injected spikes are there to be found


def test_observe_many_equals_one_step_at_a_time():
    values = noisy(200, 1)
    values[120] *= 40
    losses = [None if i % 3 else float(v) for i, v in enumerate(noisy(200, 2))]
    one, many = Detector(), Detector()
    found = []
    for i in range(200):
        found += one.observe(i, {"global_norm": float(values[i]), "loss": losses[i]})
    batch = many.observe_many(list(range(200)), {"global_norm": values.tolist(),
                                                 "loss": losses})
    assert sorted(found, key=lambda s: (s.step, s.series)) == sorted(
        batch, key=lambda s: (s.step, s.series))
    assert one.states == many.states and any(s.step == 120 for s in batch)


def _series(rng: np.random.Generator, n: int) -> list:
    """Norms or losses with what a watch meets: zeros (std 0: z is inf), negative levels,
    spikes, NaN, inf and None (not recorded)."""
    kind = rng.integers(3)
    if kind == 0:
        values = noisy(n, int(rng.integers(1000)), sigma=0.3)
    elif kind == 1:
        values = -noisy(n, int(rng.integers(1000)), level=2.0)
    else:
        values = np.zeros(n)
    values[rng.integers(0, n, 5)] *= rng.uniform(5, 500, 5)
    values[rng.integers(n // 2, n, 2)] = rng.uniform(0.1, 1.0, 2)
    out: list = values.tolist()
    for i in rng.integers(0, n, 8):
        out[i] = [math.nan, math.inf, -math.inf, None][int(rng.integers(4))]
    return out


def test_windows_as_arrays_equal_the_per_step_fold_of_update():
    """What the watch does at a flush (arrays, NaN for not recorded, ``Detector.feed`` of
    values picked out) and the guard at every step (``Detector.observe``) against
    ``update`` folded step by step, over any windows."""
    rng = np.random.default_rng(7)
    infinite = False
    for seed in range(30):
        n = 400
        norms, losses = _series(rng, n), _series(rng, n)
        steps = np.arange(n) * 2 + 5
        cfg = Config(warmup=int(rng.integers(1, 30)), z_threshold=float(rng.uniform(2, 8)))
        arrays, lists, fed, each = Detector(cfg), Detector(cfg), Detector(cfg), Detector(cfg)
        got_arrays, got_lists, got_fed, got_each = [], [], [], []
        for i, step in enumerate(steps.tolist()):
            got_each += each.observe(step, {"global_norm": norms[i], "loss": losses[i]})
        cuts = sorted(rng.integers(0, n, 4))
        for a, b in zip([0, *cuts], [*cuts, n]):
            window = {"global_norm": np.array(norms[a:b], dtype=float),  # None -> NaN
                      "loss": np.array(losses[a:b], dtype=float)}
            got_arrays += arrays.observe_many(steps[a:b], window)
            got_lists += lists.observe_many(steps[a:b].tolist(), {
                "global_norm": norms[a:b], "loss": losses[a:b]})
            for name, values in window.items():
                finite = np.isfinite(values)
                got_fed += fed.feed(name, steps[a:b][finite].tolist(), values[finite].tolist())
        expected = []
        for name, values in (("global_norm", norms), ("loss", losses)):
            state = SpikeState()
            found = []
            for step, value in zip(steps.tolist(), values):
                if value is None:
                    continue
                before = state
                state, z = spike.update(before, value, cfg)
                if z is not None and z > cfg.z_threshold:
                    std = max(math.sqrt(before.var), spike.STD_FLOOR * abs(before.mean))
                    found.append(spike.Spike(name, step, value, before.mean, std, z,
                                             cfg.z_threshold, before.peak))
            expected.append((found, state))
        key = lambda s: (s.series, s.step)  # noqa: E731
        for got, det in ((got_arrays, arrays), (got_lists, lists), (got_fed, fed),
                         (got_each, each)):
            assert sorted(got, key=key) == sorted(expected[0][0] + expected[1][0], key=key)
            assert det.states == {"global_norm": expected[0][1], "loss": expected[1][1]}, seed
            assert all(type(s.step) is int and type(s.value) is float for s in got)
        infinite |= any(s.z == math.inf for s in got_arrays)
    assert infinite  # a series of zeros: std 0
