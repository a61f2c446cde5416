"""The training-time judgements that live in rules/: the guard's verdict, GradScaler
divergence, and naming a NaN's producer from a replay or from the step's weight grads."""

from __future__ import annotations

import math

import pytest

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import amp, guard, producer
from gradhealth.rules.spike import Spike


def spike(series: str) -> Spike:
    return Spike(series, step=7, value=50.0, mean=1.0, std=0.5, z=98.0)


@pytest.mark.parametrize("norm, loss, spikes, kwargs, expected", [
    (1.0, 0.5, [], {}, (None, False)),
    (math.nan, 0.5, [], {}, ("nonfinite", False)),
    (math.inf, None, [], {}, ("nonfinite", False)),
    (1.0, math.nan, [spike("global_norm")], {}, ("nonfinite", False)),
    (50.0, 0.5, [spike("global_norm")], {}, ("spike", False)),
    (50.0, 0.5, [spike("global_norm")], {"norm_spikes": False}, (None, False)),
    (1.0, 9.0, [spike("loss")], {}, ("spike", False)),
    (1.0, 9.0, [spike("loss")], {"loss_spikes": False}, (None, False)),
    (50.0, 0.5, [spike("global_norm")], {"in_a_row": 9}, ("spike", False)),
    (50.0, 0.5, [spike("global_norm")], {"in_a_row": 10}, (None, True)),
    (50.0, 0.5, [spike("global_norm")], {"in_a_row": 3, "max_consecutive": 3}, (None, True)),
])
def test_guard_verdict(norm, loss, spikes, kwargs, expected):
    assert guard.verdict(norm, loss, spikes, **kwargs) == expected


def test_released_finding_says_how_many_skips():
    f = guard.released(40, 10)
    assert (f.kind, f.severity, f.evidence) == ("spike", "warning",
                                                {"step": 40, "consecutive_skips": 10})
    assert "10 spike skips in a row" in f.message


def test_reasons_rank_nonfinite_above_spike():
    assert guard.REASONS.index("nonfinite") > guard.REASONS.index("spike") > 0


def test_amp_divergence_only_below_a_scale_of_one():
    assert amp.diverged(0.5) and not amp.diverged(1.0) and not amp.diverged(65536.0)
    f = amp.divergence(17, 0.5)
    assert (f.kind, f.severity, f.evidence["loss_scale"], f.evidence["threshold"]) == (
        "nonfinite", "critical", 0.5, amp.AMP_DIVERGENCE_SCALE)


OWNERS = ["a", "a", "b", "c"]


def test_weight_grads_name_the_latest_sick_module_in_model_order():
    f = producer.from_weight_grads(3, [1.0, math.nan, 2.0, math.inf], OWNERS, {}, replayed=False)
    assert (f.module, f.evidence["pass"], f.evidence["count"]) == ("c", "backward", 2)
    assert f.evidence["modules_nonfinite_weight_grads"] == ["a", "c"]
    assert f.evidence["method"] == "weight gradients of the step"


def test_weight_grads_follow_the_replayed_forward_order():
    f = producer.from_weight_grads(3, [1.0, math.nan, 2.0, math.inf], OWNERS,
                                   {"a": 5, "b": 2, "c": 1}, replayed=True)
    assert f.module == "a" and f.evidence["method"].startswith("forward replay clean")


def test_every_module_nonfinite_names_no_module():
    f = producer.from_weight_grads(3, [math.nan] * 4, OWNERS, {}, replayed=True)
    assert (f.module, f.evidence["pass"], f.evidence["replayed"]) == ("", "unknown", True)
    assert "did not reproduce it" in f.message


def layer(name: str, order: int, **kw) -> LayerStats:
    return LayerStats(name=name, type="Linear", order=order, calls=1, leaf=True, n_params=4,
                      role="layer", **kw)


def test_a_forward_replay_names_the_producer_and_the_step():
    layers = {"": LayerStats(name="", type="Sequential", order=2, calls=1, leaf=False,
                             n_params=0, role="container", nonfinite_out=3),
              "0": layer("0", 0), "1": layer("1", 1, nonfinite_out=3, inputs_from=("0",))}
    f = producer.from_replay(layers, backward=False, step=12)
    assert (f.module, f.evidence["step"], f.evidence["pass"]) == ("1", 12, "forward")
    assert f.evidence["method"] == "forward replay of the batch"
    assert f.message.startswith("step 12: ")
    assert producer.from_replay(layers, backward=True, step=12) is None  # not a backward one


def test_a_clean_replay_names_nothing():
    layers = {"0": layer("0", 0), "1": layer("1", 1, inputs_from=("0",))}
    assert producer.from_replay(layers, backward=False, step=1) is None


def test_unguarded_nonfinite_lists_the_sick_modules():
    f = producer.unguarded(5, [1.0, math.nan, math.inf], ["x", "y", "z"], steps_nonfinite=4)
    assert f.evidence["modules_nonfinite_weight_grads"] == ["y", "z"]
    assert f.evidence["steps_nonfinite"] == 4 and "2 module(s)" in f.message


def test_a_finding_equals_its_copy_read_back_from_a_store(tmp_path):
    from gradhealth import RunStore, load

    live = guard.released(40, 10)
    assert live.prescription is not None
    with RunStore.create(tmp_path / "r.db") as store:
        store.write_findings([live], 40)
    (stored,) = load(tmp_path / "r.db").findings
    assert stored.prescription is None and stored == live and stored.remedy == live.remedy
