"""Rules are pure functions of records: check them on hand-made LayerStats."""

import math

import pytest

from gradhealth import LayerStats
from gradhealth.rules import chain as shallow
from gradhealth.rules import (
    dead_units,
    depth,
    exploding,
    nonfinite,
    saturation,
    through_time,
    vanishing,
)


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
    # two hidden layers not wired as a plain chain (no inputs_from): no judgement
    assert vanishing.check(chain([1e-6, 1.0]), {}) == []


def plain(norms, head=1.0, between=("activation", "Sigmoid")):
    """Linear -> module -> Linear -> ... -> head, wired by inputs_from as a probe records
    it; ``between`` is the (role, type) of the module after each hidden layer."""
    layers, prev, order = {}, (), 0
    for i, g in enumerate(norms):
        layers[f"l{i}"] = layer(f"l{i}", order, g, inputs_from=prev, activation_after=f"a{i}")
        layers[f"a{i}"] = LayerStats(name=f"a{i}", type=between[1], order=order + 1, calls=1,
                                     leaf=True, n_params=0, role=between[0],
                                     activation="sigmoid", inputs_from=(f"l{i}",))
        prev, order = (f"a{i}",), order + 2
    layers["head"] = layer("head", order, head, inputs_from=prev)
    return layers


class TestShallowChain:
    """One or two hidden layers: the norm from the first layer to the head (rules/chain.py)."""

    def test_threshold_is_six_depth_scales(self):
        assert vanishing.SHALLOW_VANISHING_RATIO == pytest.approx(math.exp(-3))
        assert vanishing.check(plain([0.051, 0.2]), {}) == []
        [f] = vanishing.check(plain([0.049, 0.2]), {})
        assert f.kind == "vanishing" and f.module == "l0" and f.modules == ("l0",)
        assert f.evidence["threshold"] == vanishing.SHALLOW_VANISHING_RATIO
        assert f.evidence["output_end"] == "head" and f.evidence["depth"] == 3
        assert f.evidence["per_layer_factor"] == pytest.approx(math.sqrt(0.049))
        assert f.severity == "warning" and "of that at the head" in f.message
        assert "nn.Sigmoid" in f.remedy

    def test_article_sigmoid_net_measured_at_init(self):
        # gh.probe's norms on the lab's 784-300-100-10 sigmoid net, PyTorch default init
        [f] = vanishing.check(plain([0.001133, 0.008063], head=0.05939), {})
        assert f.evidence["grad_ratio_input_to_output"] == pytest.approx(0.0191, rel=1e-2)

    def test_one_hidden_layer_is_one_step(self):
        assert vanishing.check(plain([0.14]), {}) == []  # sigmoid, default init: ~sqrt(1/48)
        [f] = vanishing.check(plain([0.01]), {})
        assert f.evidence["per_layer_factor"] == pytest.approx(0.01)

    def test_the_head_is_the_reference(self):
        # equal hidden norms, both far under the head's: the deep profile would see 1.0
        [f] = vanishing.check(plain([0.01, 0.01]), {})
        assert f.modules == ("l0", "l1")

    @pytest.mark.parametrize("between", [("activation", "ReLU"), ("other", "Dropout"),
                                         ("other", "Flatten"), ("other", "Identity")])
    def test_elementwise_modules_keep_the_chain(self, between):
        assert shallow.profile(plain([0.01, 0.1], between=between)) is not None

    @pytest.mark.parametrize("between", [("norm", "BatchNorm1d"), ("norm", "LayerNorm"),
                                         ("other", "AdaptiveAvgPool2d"), ("other", "MaxPool2d")])
    def test_normalisation_or_pooling_breaks_the_chain(self, between):
        # a BatchNorm's backward gain is 1/std of its batch (raw 0-255 pixels read as 1/255);
        # an average over N positions divides the norm by sqrt(N)
        layers = plain([1e-4, 1e-3], between=between)
        assert shallow.profile(layers) is None and vanishing.check(layers, {}) == []

    def test_functional_op_or_branch_breaks_the_chain(self):
        layers = plain([1e-4, 1e-3])
        unwired = dict(layers, head=layer("head", 4, 1.0, inputs_from=()))  # x.mean(1) etc.
        assert vanishing.check(unwired, {}) == []
        merged = dict(layers, head=layer("head", 4, 1.0, inputs_from=("a1", "a0")))  # x + f(x)
        assert vanishing.check(merged, {}) == []

    def test_deeper_nets_stay_with_the_depth_profile(self):
        layers = plain([0.2, 0.2, 0.2, 0.2], head=100.0)  # four hidden layers: thirds, no head
        assert shallow.profile(layers) is None and vanishing.check(layers, {}) == []

    def test_three_hidden_layers_are_measured_from_the_head_against_the_depth_threshold(self):
        # gh.probe's norms on zoo's sigmoid-default-3: the thirds alone read 0.018
        [f] = vanishing.check(plain([0.000152, 0.001158, 0.008285], head=0.059388), {})
        assert f.evidence["output_end"] == "head" and f.evidence["depth"] == 4
        assert f.evidence["threshold"] == vanishing.VANISHING_RATIO
        assert f.evidence["grad_ratio_input_to_output"] == pytest.approx(0.00256, rel=1e-2)
        assert f.evidence["per_layer_factor"] == pytest.approx(0.00256 ** (1 / 3), rel=1e-2)
        assert f.modules == ("l0",) and "of that at the head" in f.message

    def test_three_hidden_layers_keep_the_threshold_per_layer_of_their_neighbours(self):
        # 0.01 over three steps and e^-3 over two both allow ~0.22 per layer
        assert vanishing.VANISHING_RATIO ** (1 / 3) == pytest.approx(
            vanishing.SHALLOW_VANISHING_RATIO ** (1 / 2), rel=0.05)
        # zoo's gelu-default-wide-3: 0.03 of the head, under e^-3 but over 0.01
        assert vanishing.check(plain([0.001802, 0.005096, 0.016966], head=0.05931), {}) == []
        assert vanishing.check(plain([0.0099, 0.1, 0.3]), {})
        assert vanishing.check(plain([0.0101, 0.1, 0.3]), {}) == []

    def test_three_hidden_layers_not_in_a_plain_chain_keep_the_thirds(self):
        layers = plain([0.009, 0.05, 0.2])
        layers["head"] = layer("head", 6, 1.0, inputs_from=())  # a functional op before it
        assert shallow.profile(layers) is None and vanishing.check(layers, {}) == []

    def test_no_shallow_exploding(self):
        # chi_c = chi_1 only in the ordered phase: no trainable-depth budget for growth
        assert exploding.check(plain([1e3, 30.0]), {}) == []


def normed(weight_norms, norm_norms, norm_type="BatchNorm1d", head=1.0):
    """Linear -> norm -> ReLU -> ... -> head, wired as a probe records it; the Linear
    layers' dL/d(output) norms and their normalisation layers' are given apart."""
    layers, prev, order = {}, (), 0
    for i, (g, gn) in enumerate(zip(weight_norms, norm_norms)):
        layers[f"l{i}"] = layer(f"l{i}", order, g, inputs_from=prev, activation_after=f"a{i}")
        layers[f"n{i}"] = LayerStats(name=f"n{i}", type=norm_type, order=order + 1, calls=1,
                                     leaf=True, n_params=2, grad_norm=gn, role="norm",
                                     inputs_from=(f"l{i}",))
        layers[f"a{i}"] = LayerStats(name=f"a{i}", type="ReLU", order=order + 2, calls=1,
                                     leaf=True, n_params=0, role="activation",
                                     activation="relu", inputs_from=(f"n{i}",))
        prev, order = (f"a{i}",), order + 3
    layers["head"] = layer("head", order, head, inputs_from=prev)
    return layers


class TestNormalisedLayers:
    """A weight layer read only by a normalisation layer is judged by dL/d(norm output)."""

    @pytest.mark.parametrize("first", [1 / 1000, 1 / 255, 1000.0])
    @pytest.mark.parametrize("n", [3, 4, 5, 8])
    def test_input_scale_does_not_decide(self, n, first):
        # the first layer's output is 1/first times too large (inputs x1000: 1/1000)
        layers = normed([first] + [1.0] * (n - 1), [1.0] * n)
        assert depth.profile(layers).ratio == pytest.approx(1.0)
        assert vanishing.check(layers, {}) == [] and exploding.check(layers, {}) == []

    def test_the_gradient_after_the_norm_still_vanishes(self):
        found = vanishing.check(normed([1.0, 1.0, 1.0, 1.0], [1e-3, 0.1, 1.0, 1.0]), {})
        assert [f.module for f in found] == ["l0"]
        assert found[0].evidence["read_after_norm"] == {f"l{i}": f"n{i}" for i in range(4)}
        assert found[0].evidence["grad_norm_input_end"] == pytest.approx(1e-3)

    @pytest.mark.parametrize("norm_type", ["LayerNorm", "GroupNorm", "BatchNorm2d", "RMSNorm"])
    def test_every_scale_free_norm(self, norm_type):
        assert depth.normalised(normed([1e-3] * 3, [1.0] * 3, norm_type)).keys() == {"l0", "l1",
                                                                                   "l2"}

    def test_local_response_norm_is_not_scale_free(self):
        layers = normed([1e-3, 1.0, 1.0], [1.0] * 3, "LocalResponseNorm")
        assert depth.normalised(layers) == {} and vanishing.check(layers, {})

    def test_elementwise_modules_between_and_in_place_aliases(self):
        # Linear -> ReLU(inplace) -> Dropout -> BatchNorm: the in-place ReLU returns the
        # Linear's own tensor, so the probe records the Dropout as reading the Linear too
        layers = {"l0": layer("l0", 0, 1e-3),
                  "r0": LayerStats(name="r0", type="ReLU", order=1, calls=1, leaf=True,
                                   n_params=0, role="activation", inputs_from=("l0",)),
                  "d0": LayerStats(name="d0", type="Dropout", order=2, calls=1, leaf=True,
                                   n_params=0, role="other", inputs_from=("l0",)),
                  "n0": LayerStats(name="n0", type="BatchNorm1d", order=3, calls=1, leaf=True,
                                   n_params=2, grad_norm=1.0, role="norm", inputs_from=("d0",))}
        assert depth.normalised(layers)["l0"].name == "n0"

    def test_a_second_reader_keeps_the_layers_own_gradient(self):
        layers = normed([1e-3, 1.0, 1.0], [1.0] * 3)
        layers["side"] = layer("side", 99, 1.0, inputs_from=("l0",))  # a branch off l0
        assert "l0" not in depth.normalised(layers) and vanishing.check(layers, {})
        layers = normed([1e-3, 1.0, 1.0], [1.0] * 3)
        layers["blk"] = LayerStats(name="blk", type="Block", order=0, calls=1, leaf=False,
                                   n_params=0, role="container", inputs_from=("l0",))
        assert "l0" in depth.normalised(layers)  # a container repeats its child's input


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
