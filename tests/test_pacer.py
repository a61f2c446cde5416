"""The watch's pacing: "auto" keeps sampling and writing under their budget of the
training time on short steps, and a number given explicitly is kept exactly."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradhealth as gh
from gradhealth.errors import ConfigError
from gradhealth.training import pacer as pacer_module
from gradhealth.training.pacer import AUTO_EVERY, BUDGET, MAX_SECONDS, MAX_STRETCH, Pacer


class Clock:
    """A fake ``time.perf_counter``: advanced by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(pacer_module.time, "perf_counter", fake)
    return fake


def run_steps(p: Pacer, clock: Clock, steps: int, step_s: float | Callable[[int], float],
              sample_s: float) -> list[int]:
    """Steps of ``step_s`` seconds (or ``step_s(step)``); a sampled step takes ``sample_s``
    more. The sampled ones."""
    sampled, pending = [], p.sample_due(0)
    for step in range(steps):
        took = step_s(step) if callable(step_s) else step_s
        clock.now += took + (sample_s if pending else 0.0)
        p.step_started(sampled=pending)
        if pending:
            p.sampled(step, collected=0.0)
            sampled.append(step)
        pending = p.sample_due(step + 1)
    return sampled


def test_a_stretched_interval_looked_at_every_recheck_steps_follows_the_exact_rule(
        clock, monkeypatch):
    """The stretched sampling interval is worked out at its nominal end and then every
    ``RECHECK`` steps, not every step: the samples come when the rule worked out at every
    step says, or at most ``RECHECK`` steps later, also when the step time changes."""
    def schedule(recheck: int) -> list[int]:
        monkeypatch.setattr(pacer_module, "RECHECK", recheck)
        clock.now = 100.0
        return run_steps(Pacer("auto", "auto"), clock, 6000, sample_s=0.004, step_s=lambda
                         step: 0.001 if step < 2500 else (0.004 if step < 4000 else 0.0005))

    exact, looked = schedule(1), schedule(pacer_module.RECHECK)
    assert len(exact) == len(looked) > 8
    for a, b in zip(exact, looked):
        assert 0 <= b - a <= pacer_module.RECHECK, (a, b)
    assert exact[:2] == looked[:2]  # an unchanging step time: exactly the rule's steps


def test_explicit_numbers_are_kept_exactly(clock):
    p = Pacer(sample_every=7, flush_every=3)
    assert run_steps(p, clock, 30, step_s=1e-4, sample_s=1.0) == [0, 7, 14, 21, 28]
    assert p.write_due() and p.flush_every == 3
    assert not Pacer(None, 5).sample_due(0)


def test_auto_on_long_steps_samples_every_50(clock):
    p = Pacer("auto", "auto")
    # 40 ms steps, a sample costs 5 ms: under 0.5% of the 2 s that 50 steps take
    got = run_steps(p, clock, 201, step_s=0.040, sample_s=0.005)
    assert got == [0, 50, 100, 150, 200]


def test_auto_on_short_steps_stretches_sampling_to_its_budget(clock):
    p = Pacer("auto", "auto")
    step_s, sample_s = 0.001, 0.0008  # 1 ms steps, a sample costs 0.8 ms more
    got = run_steps(p, clock, 3000, step_s=step_s, sample_s=sample_s)
    gaps = {b - a for a, b in zip(got[1:], got[2:])}
    want = math.ceil(sample_s / (BUDGET * step_s))  # 160 steps: 0.8 ms in 0.5% of 0.16 s
    assert gaps == {want} and AUTO_EVERY < want < MAX_STRETCH * AUTO_EVERY
    assert got[1] >= AUTO_EVERY


def test_auto_never_stretches_past_four_intervals_on_steps_of_5_ms_and_more(clock):
    p = Pacer("auto", "auto")
    # a sample costing 40 ms on 10 ms steps would need 800 steps to stay in budget; a
    # second of training is 100 steps: four nominal intervals (200 steps) is the longer
    got = run_steps(p, clock, 3000, step_s=0.010, sample_s=0.040)
    assert {b - a for a, b in zip(got[1:], got[2:])} == {MAX_STRETCH * AUTO_EVERY}
    # and writes: a window costing 20 ms waits 4 s uncapped, 4 windows (2 s) here
    p.wrote(windows=1, seconds=0.020)
    clock.now += MAX_STRETCH * AUTO_EVERY * p.step_time * 0.99
    assert not p.write_due()
    clock.now += MAX_STRETCH * AUTO_EVERY * p.step_time * 0.02
    assert p.write_due()


def test_auto_never_stretches_past_a_second_on_shorter_steps(clock):
    p = Pacer("auto", "auto")
    # a sample costing 8 ms on 1 ms steps would need 1,600 steps to stay in budget; a
    # second of training (1,000 steps) is longer than four nominal intervals, and binds
    got = run_steps(p, clock, 6000, step_s=0.001, sample_s=0.008)
    gaps = {b - a for a, b in zip(got[1:], got[2:])}
    assert gaps == {math.floor(MAX_SECONDS / p.step_time)}
    assert 999 <= math.floor(MAX_SECONDS / p.step_time) <= 1000
    # writes: a window costing 8 ms waits 1.6 s uncapped, a second here
    p.wrote(windows=1, seconds=0.008)
    clock.now += MAX_SECONDS * 0.99
    assert not p.write_due()
    clock.now += MAX_SECONDS * 0.02
    assert p.write_due()


def test_auto_writes_are_spaced_by_their_cost(clock):
    p = Pacer("auto", "auto")
    assert p.write_due()  # nothing measured yet: write
    p.wrote(windows=1, seconds=0.002)
    assert not p.write_due()
    clock.now += 0.002 / BUDGET - 1e-6
    assert not p.write_due()
    clock.now += 2e-6
    assert p.write_due()


def writes(p: Pacer, clock: Clock, step_s: float, fixed_s: float, per_window_s: float,
           steps: int) -> list[int]:
    """Windows written per write over ``steps`` steps, a write costing ``fixed_s`` plus
    ``per_window_s`` per window (as ``Recorder.process`` reports them to the pacer)."""
    done, waiting = [], 0
    for step in range(steps):
        clock.now += step_s
        p.step_started(sampled=False)
        if step % AUTO_EVERY == AUTO_EVERY - 1:
            waiting += 1
        if waiting and p.write_due():
            p.wrote(waiting, fixed_s + per_window_s * waiting)
            done.append(waiting)
            waiting = 0
    return done


def test_auto_writes_meet_their_budget_by_sharing_a_write_between_windows(clock):
    """A write's fixed cost is shared by the windows it writes: the writes space out until
    the whole write is BUDGET of the time since the last one."""
    p = Pacer("auto", "auto")
    # 20 ms steps (a window: 1 s); a write costs 8 ms + 1 ms a window: one window a write
    # would be 0.9%, two are 10 ms in 2 s (0.5%)
    done = writes(p, clock, 0.020, 0.008, 0.001, 40 * AUTO_EVERY)
    assert set(done[3:]) == {2}
    cost = sum(0.008 + 0.001 * k for k in done) / (40 * AUTO_EVERY * 0.020)
    assert cost <= BUDGET * 1.1


def test_auto_writes_wait_the_longest_interval_when_a_window_alone_is_over_budget(clock):
    """On 1 ms steps a window's own 0.4 ms is 0.8% of its 50 ms: no spacing meets the
    budget, and the writes go to the longest interval (a second), each sharing its fixed
    cost between 20 windows."""
    p = Pacer("auto", "auto")
    done = writes(p, clock, 0.001, 0.0005, 0.0004, 10_000)
    assert done[-3:] == [MAX_SECONDS / 0.001 / AUTO_EVERY] * 3  # 20 windows a write
    assert done == sorted(done)  # the waits grow write after write up to it


@pytest.mark.parametrize("bad", ["sometimes", 0, -5, 2.5, True])
def test_bad_intervals_are_refused(bad):
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="auto"):
        gh.watch(model, sample_every=bad)
    with pytest.raises(ConfigError, match="auto"):
        gh.watch(model, flush_every=bad)


def test_the_defaults_are_auto_and_a_short_run_is_complete(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with gh.watch(model, opt, store=tmp_path / "r.db") as w:
        assert w.pacer.auto_sample and w.pacer.auto_flush
        for _ in range(120):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            opt.step()
    run = gh.load(tmp_path / "r.db")
    # every step and its loss are stored whatever the pacing; the first step is sampled
    assert run.steps["step"].tolist() == list(range(120))
    assert not run.steps.missing("loss").any()
    assert run.meta["config"]["sample_every"] == "auto"
    assert 0 in run.layer_stat("out_rms")[0].tolist()


def test_a_pause_between_steps_does_not_make_the_next_steps_look_long(clock):
    """An evaluation of 2 s between 1 ms steps: the step-time average moves by at most
    a factor 1.3, so sampling stays stretched; a lasting change of pace is followed."""
    p = Pacer("auto", "auto")
    run_steps(p, clock, 300, step_s=0.001, sample_s=0.004)
    before = p.step_time
    clock.now += 2.0  # the pause
    p.step_started(sampled=False)
    assert p.step_time == pytest.approx(before * (0.9 + 0.1 * 4.0))
    for _ in range(40):  # steps ten times longer from now on
        clock.now += 0.010
        p.step_started(sampled=False)
    assert p.step_time == pytest.approx(0.010, rel=0.05)
