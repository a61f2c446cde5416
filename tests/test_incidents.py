"""Incidents: findings grouped into what went wrong, with onset, course, outcome and one
remedy (rules/incident.py, rules/tracker.py), pure functions of host numbers."""

from __future__ import annotations

import math

import numpy as np

from gradhealth.rules import dead_units, incident, spike, tracker
from gradhealth.rules.divergence import BLOCK_STEPS
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import Incident, from_record
from gradhealth.rules.remedy import Remedy
from gradhealth.rules.tracker import FOLLOW_STEPS, GAP_STEPS, SETTLE_STEPS, Tracker


def spike_at(step: int, severity: str = "warning", norm: float = 600.0) -> Finding:
    s = spike.Spike("global_norm", step, norm, 0.2, 0.05, 100.0, level=2.0)
    f = spike.finding([s], ("fc2", 50.0))
    return Finding(f.kind, f.module, severity, f.evidence, message=f.message,
                   modules=f.modules, prescription=f.prescription)


def dead_at(step: int, onset: int, module: str = "act2", fraction: float = 0.98) -> Finding:
    return Finding("dead_units", module, "critical",
                   {"dead_fraction": fraction, "onset_step": onset, "samples": 2},
                   prescription=Remedy("revive", ("fc2",), {"activation_layer": module,
                                                            "slope": dead_units.LEAKY_SLOPE}),
                   modules=(module,), message=f"{fraction:.0%} of `{module}` dead")


def losses(tr: Tracker, steps: range, value) -> None:
    tr.observe(list(steps), [value(s) for s in steps])


def test_consecutive_spikes_are_one_incident_and_a_later_one_another():
    tr = Tracker()
    for step in (200, 201, 203, 203 + GAP_STEPS):
        tr.add(spike_at(step), step, step + 40)
    tr.add(spike_at(210, "info", norm=9.0), 210)  # information only lengthens it
    tr.add(spike_at(900), 900, 949)
    first, second = tr.incidents()
    assert (first.onset, first.end, first.findings, first.kinds) == (200, 210, 4, ("spike",))
    assert first.reported == {"spike": 240} and first.peak["global_norm"] == 600.0
    assert first.peak["scale"] == 300.0  # 600 against the run's level of 2
    assert "spike from step 200, 11 steps" in first.message
    assert second.onset == 900 and second.number == 2


def test_information_alone_opens_nothing():
    tr = Tracker()
    tr.add(spike_at(50, "info", norm=5.0), 50)
    assert tr.incidents() == []


def test_units_that_die_after_a_spike_are_what_followed_it():
    tr = Tracker()
    tr.add(spike_at(200), 200, 249)
    tr.add(dead_at(252, onset=250), 252, 252)
    tr.add(dead_at(252, onset=250, module="act4", fraction=0.7), 252, 252)
    tr.add(dead_at(900, onset=850, module="act5"), 900)  # too late: its own incident
    first, later = tr.incidents()
    assert first.kinds == ("spike", "dead_units") and first.severity == "critical"
    assert first.onsets == {"spike": 200, "dead_units": 250}
    assert first.reported == {"spike": 249, "dead_units": 252}
    assert "units died in 2 layers: `act2` 98%, `act4` 70%" in first.outcome
    # one remedy: clip the spikes, guard, then revive the units, each once
    assert first.remedy.index("ZClip") < first.remedy.index("Revive the units")
    assert first.remedy.count("Revive the units") == 1
    assert later.kinds == ("dead_units",) and later.onset == 850


def test_a_finding_that_began_before_an_incident_leads_it():
    tr = Tracker()
    tr.add(dead_at(450, onset=400), 450)
    div = Finding("divergence", "", "critical", {"onset_step": 380, "step": 430},
                  prescription=Remedy("diverged", params={"step": 380}), message="diverged")
    tr.add(div, 430)
    [only] = tr.incidents()
    assert only.kinds == ("divergence", "dead_units") and only.onset == 380


def test_the_same_condition_again_is_the_same_incident_whatever_the_time():
    tr = Tracker()
    tr.add(dead_at(0, 0, fraction=0.6), 0)
    tr.add(dead_at(5000, 4900, fraction=0.95), 5000)
    [only] = tr.incidents()
    assert only.findings == 2 and only.onset == 0


def test_outcome_settles_on_the_loss_before_and_after():
    recovering, staying = Tracker(), Tracker()
    for tr, after in ((recovering, 0.011), (staying, 2.3)):
        losses(tr, range(0, 200), lambda s: 2.3 if s < 10 else 0.01)
        tr.add(spike_at(200), 200, 200)
        losses(tr, range(200, 200 + SETTLE_STEPS), lambda s, a=after: a)
        assert "too early to say" in tr.incidents()[0].outcome
        losses(tr, range(200 + SETTLE_STEPS, 300), lambda s, a=after: a)
    back = recovering.incidents()[0]
    assert "came back to its level (0.011 after, 0.01 before)" in back.outcome
    assert back.before == {"loss": 0.01} and back.after == {"loss": 0.011}
    assert "stayed above its level (2.3 after" in staying.incidents()[0].outcome


def test_nan_after_a_spike_is_what_followed():
    tr = Tracker()
    losses(tr, range(0, 200), lambda s: 0.1)
    tr.add(spike_at(200), 200)
    nan = Finding("nonfinite", "", "critical", {"step": 215, "pass": "unknown"}, message="nan")
    tr.add(nan, 215)
    losses(tr, range(200, 300), lambda s: math.nan if s >= 215 else 5.0)
    [only] = tr.incidents()
    assert only.kinds == ("spike", "nonfinite") and "NaN/Inf from step 215" in only.outcome
    assert only.end == 215


def test_changed_gives_each_new_or_changed_incident_once():
    tr = Tracker()
    tr.add(spike_at(10), 10)
    assert [i.number for i in tr.changed()] == [1]
    assert tr.changed() == []
    tr.add(spike_at(12), 12)
    assert [i.findings for i in tr.changed()] == [2]


def test_an_incident_holds_its_findings_and_reads_back_from_its_record():
    tr = Tracker()
    f = spike_at(7)
    tr.add(f, 7)
    [i] = tr.incidents()
    assert i.holds(f) and not i.holds(spike_at(8))
    data = i.to_dict()
    back = from_record({**data, "peak": data["peak"]})
    assert isinstance(back, Incident) and back == i and back.prescription is None


def test_the_follow_window_is_steps_from_the_last_step_it_was_seen_going_on():
    tr = Tracker()
    tr.add(spike_at(100), 100)
    tr.add(dead_at(300, onset=100 + FOLLOW_STEPS), 300)  # seen at 300: open until then
    tr.add(dead_at(500, onset=301 + FOLLOW_STEPS, module="other"), 500)
    assert [i.kinds for i in tr.incidents()] == [("spike", "dead_units"), ("dead_units",)]


def test_peaks_ignore_what_is_not_a_finite_number():
    f = Finding("spike", "", "warning", {"global_norm": math.inf, "loss": "nan",
                                        "dead_fraction": 0.5, "global_norm_level": 0.0})
    assert incident.peaks([f]) == {"dead_fraction": 0.5}


def test_tracker_history_is_bounded():
    tr = Tracker()
    losses(tr, range(0, 3 * tracker.HISTORY_STEPS), lambda s: float(s))
    assert len(tr.losses(0, 10**9)) == tracker.HISTORY_STEPS
    assert tr.initial == float(np.median(range(10))) and tr.last == 3 * tracker.HISTORY_STEPS - 1


def test_an_incident_remedy_is_worded_for_keras_from_its_data():
    tr = Tracker()
    tr.add(spike_at(200), 200)
    tr.add(dead_at(252, onset=250), 252)
    [i] = tr.incidents()
    keras = incident.worded(i, "keras")
    assert "global_clipnorm" in keras.remedy and "ZClip" not in keras.remedy
    assert "ZClip" in i.remedy and incident.worded(from_record(i.to_dict()), "keras").remedy \
        == i.remedy  # read back from a store: the wording it was stored with


def test_a_condition_still_present_keeps_its_incident_open():
    tr = Tracker()
    tr.add(dead_at(12, onset=5), 12)
    for step in range(20, 400, 10):  # every sample still finds the units dead
        tr.present(step, {("dead_units", "act2")})
    tr.present(400, {("saturation", "other")})  # another condition: no bearing on it
    div = Finding("divergence", "", "critical", {"onset_step": 430, "step": 479},
                  prescription=Remedy("diverged", params={"step": 430}), message="diverged")
    tr.add(div, 479)
    [only] = tr.incidents()
    assert only.kinds == ("dead_units", "divergence") and (only.onset, only.end) == (5, 390)
    alone = Tracker()
    alone.add(dead_at(12, onset=5), 12)
    alone.add(div, 479)  # no sign the units stayed dead: a separate incident
    assert len(alone.incidents()) == 2


def test_the_follow_window_widens_with_the_interval_between_sampled_steps():
    """Under "auto" pacing samples can lie 200 steps apart: units found dead at the
    sample 200 steps after a spike followed it (at 50 steps apart, they would not)."""
    def story(every: int) -> list[tuple[str, ...]]:
        tr = Tracker()
        tr.sampled_every(every)
        tr.add(spike_at(200), 200, 210)
        tr.add(dead_at(400, onset=400), 402, 402)
        return [i.kinds for i in tr.incidents()]
    assert story(50) == [("spike",), ("dead_units",)]
    assert story(200) == [("spike", "dead_units")]
    tr = Tracker()
    tr.sampled_every(10)  # never narrower than FOLLOW_STEPS
    assert tr.follow == FOLLOW_STEPS


def test_windows_as_arrays_hold_the_losses_of_the_step_by_step_reading():
    """``Tracker.observe`` of windows as arrays (NaN: not logged) or lists with None keeps
    the history, first losses, last step and outcomes of reading one step at a time."""
    rng = np.random.default_rng(5)
    n = 3 * tracker.HISTORY_STEPS
    values: list = (2.3 * np.exp(-np.arange(n) / 500) * rng.lognormal(0, 0.2, n)).tolist()
    for i in rng.integers(0, n, 200):
        values[i] = [math.nan, math.inf, None][int(rng.integers(3))]
    values[:5] = [None, math.nan, None, math.inf, None]  # the first losses come later
    steps = np.arange(n) + 7
    arrays, lists, reference = Tracker(), Tracker(), Tracker()
    for tr in (arrays, lists, reference):
        tr.add(spike_at(400), 400, 420)
        tr.add(spike_at(2000), 2000, 2020)
    cuts = sorted(rng.integers(0, n, 12))
    for a, b in zip([0, *cuts], [*cuts, n]):
        arrays.observe(steps[a:b], np.array(values[a:b], dtype=float))
        lists.observe(steps[a:b].tolist(), values[a:b])
        for step, loss in zip(steps[a:b], values[a:b]):  # the reference, as it was
            reference._last = max(reference._last, int(step))
            if loss is not None and math.isfinite(loss):
                reference._history.append((int(step), float(loss)))
                if len(reference._initial) < BLOCK_STEPS:
                    reference._initial.append(float(loss))
        for case in reference._cases:
            if case.settles() and not case.settled and reference.last >= case.end + SETTLE_STEPS:
                reference._settle(case)
    for tr in (arrays, lists):
        assert list(tr._history) == list(reference._history)
        assert tr._initial == reference._initial and tr.last == reference.last
        assert tr.incidents() == reference.incidents()
        assert all(type(s) is int and type(v) is float for s, v in tr._history)
    assert len(reference.incidents()) == 2
    assert all(i.before and i.after for i in reference.incidents())  # settled on losses
