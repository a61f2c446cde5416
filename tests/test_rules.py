"""Rules are pure functions of records: check them on hand-made LayerStats."""

import pytest

from gradhealth.findings import LayerStats
from gradhealth.rules import dead_units, exploding, nonfinite, saturation, through_time, vanishing


def layer(name, order, grad_norm=1.0, role="layer", **kw):
    return LayerStats(name=name, type="Linear", order=order, calls=1, leaf=True,
                      n_params=10, grad_norm=grad_norm, grad_rms=grad_norm, role=role, **kw)


def chain(norms):
    """Weight layers with the given gradient norms, input first, plus a head."""
    layers = {f"l{i}": layer(f"l{i}", i, g) for i, g in enumerate(norms)}
    layers["head"] = layer("head", len(norms), 1.0)
    return layers


def test_vanishing_threshold_is_a_ratio_between_the_ends():
    assert vanishing.check(chain([0.011, 0.1, 1.0]), {}) == []
    found = vanishing.check(chain([0.009, 0.1, 1.0]), {})
    assert [f.module for f in found] == ["l0"]
    assert found[0].evidence["threshold"] == vanishing.VANISHING_RATIO
    assert found[0].severity == "warning"
    assert vanishing.check(chain([1e-5, 1e-3, 1.0]), {})[0].severity == "critical"


def test_depth_rules_need_depth():
    assert vanishing.check(chain([1e-6, 1.0]), {}) == []  # two hidden layers: no judgement


def test_exploding_mirror():
    found = exploding.check(chain([500.0, 20.0, 1.0]), {})
    assert found and found[0].module == "l0" and "clip_grad_norm_" in found[0].remedy
    assert vanishing.check(chain([500.0, 20.0, 1.0]), {}) == []


def test_the_head_is_not_part_of_the_depth_profile():
    layers = chain([1.0, 1.0, 1.0])
    layers["head"] = layer("head", 3, 1e6)
    assert vanishing.check(layers, {}) == [] and exploding.check(layers, {}) == []


def test_through_time_uses_first_and_last_tenths():
    series = tuple(0.5 ** (40 - t) for t in range(40))
    rnn = {"rnn": layer("rnn", 0, role="recurrent", time_grad_rms=series)}
    found = through_time.check(rnn, {})
    assert found[0].kind == "vanishing" and found[0].module == "rnn"
    short = {"rnn": layer("rnn", 0, role="recurrent", time_grad_rms=series[-5:])}
    assert through_time.check(short, {}) == []  # under MIN_STEPS


def test_dead_units_needs_a_batch():
    relu = {"r": layer("r", 0, role="activation", dead_fraction=0.95)}
    assert dead_units.check(relu, {"batch_size": 8}) == []
    found = dead_units.check(relu, {"batch_size": 64})
    assert found[0].severity == "critical" and found[0].module == "r"


def test_saturation_is_one_finding_named_by_the_worst_layer():
    layers = {"a": layer("a", 0, role="activation", saturation=0.6),
              "b": layer("b", 1, role="activation", saturation=0.95),
              "c": layer("c", 2, role="activation", saturation=0.1)}
    [f] = saturation.check(layers, {})
    assert f.module == "b" and f.modules == ("b", "a") and f.severity == "critical"


class TestNonfinite:
    def test_producer_not_propagators(self):
        layers = {"": layer("", 9, role="container", nonfinite_out=5),
                  "a": layer("a", 0), "b": layer("b", 1, nonfinite_out=5),
                  "c": layer("c", 2, nonfinite_in=5, nonfinite_out=5)}
        [f] = nonfinite.check(layers, {"loss": float("nan")})
        assert f.module == "b" and f.evidence["pass"] == "forward" and f.severity == "critical"

    def test_container_is_producer_when_no_child_is(self):
        layers = {"block": layer("block", 3, role="container", nonfinite_out=1),
                  "block.fc": layer("block.fc", 2)}
        assert nonfinite.check(layers, {"loss": float("inf")})[0].module == "block"

    def test_absorbed_mask_is_info_only(self):
        layers = {"mask": layer("mask", 0, nonfinite_out=3)}
        [f] = nonfinite.check(layers, {"loss": 1.0})
        assert f.severity == "info"

    def test_backward_producer(self):
        layers = {"a": layer("a", 0, nonfinite_grad=4), "b": layer("b", 1, inputs_from=("a",)),
                  "c": layer("c", 2, inputs_from=("b",))}
        [f] = nonfinite.check(layers, {"loss": 1.0})
        assert f.module == "b" and f.evidence["pass"] == "backward"


@pytest.mark.parametrize("rule", [vanishing, exploding, through_time, saturation, dead_units,
                                  nonfinite])
def test_rules_are_silent_on_an_empty_model(rule):
    assert rule.check({}, {}) == []
