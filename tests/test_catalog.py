"""One module vocabulary (``gradhealth.measure.catalog``) for the probe, the fixes and Keras.

The kinds are the fine ones (ReLU6 is "relu6", CELU "celu", Hardsigmoid "hardsigmoid");
the fixes reach the coarser family they need (the init gain) through the catalog, so the
probe and the fixes can never name one module differently. The Keras side of the
vocabulary is tested in tests/test_integrations_keras_probe.py (it needs keras).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradhealth import probe
from gradhealth._fix import apply
from gradhealth.fixes import following_activations, he_normal_, swap_activations_
from gradhealth.fixes.graph import FollowingActivation
from gradhealth.fixes.init import gain_for
from gradhealth.fixes.plan import Action, _init_for
from gradhealth.measure import catalog
from gradhealth.measure.catalog import Band
from gradhealth.measure.records import Unit
from gradhealth.measure.taps import Measured

SQRT2 = math.sqrt(2.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_module_kinds_are_the_fine_ones():
    kinds = {cls: catalog.module_kind(cls()) for cls in (
        nn.ReLU, nn.ReLU6, nn.CELU, nn.ELU, nn.Hardsigmoid, nn.Sigmoid, nn.Hardswish,
        nn.Hardtanh, nn.Softmax, nn.LogSoftmax, nn.Module)}
    assert kinds == {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.CELU: "celu", nn.ELU: "elu",
                     nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid",
                     nn.Hardswish: "hardswish", nn.Hardtanh: "hardtanh", nn.Softmax: "softmax",
                     nn.LogSoftmax: "softmax", nn.Module: None}
    # softmax is a kind the fixes see, not an activation the probe measures as one
    assert catalog.activation_kind(nn.Softmax(dim=-1)) is None
    assert catalog.activation_kind(nn.ReLU6()) == "relu6"
    assert catalog.RECTIFIERS == {"relu", "relu6"}


def test_functions_by_name_torch_and_keras():
    assert [catalog.function_kind(f.__name__) for f in (
        F.relu, F.relu6, F.celu, F.hardsigmoid, F.hardswish, F.softmax, F.log_softmax,
        torch.tanh, torch.sigmoid)] == ["relu", "relu6", "celu", "hardsigmoid", "hardswish",
                                        "softmax", "softmax", "tanh", "sigmoid"]
    assert [catalog.function_kind(n) for n in ("relu_", "swish", "hard_sigmoid", "hard_tanh",
                                               "hard_silu", "linear", "exponential")] == [
        "relu", "silu", "hardsigmoid", "hardtanh", "hardswish", None, None]
    assert catalog.class_kind("LeakyReLU") == "leaky_relu" and catalog.class_kind("Dense") is None


def test_saturation_bands_are_what_the_probe_measured_before():
    # the bands of the earlier per-type function, value by value
    expected = {
        nn.Sigmoid(): Band(0.02, 0.98), nn.Tanh(): Band(-0.98, 0.98),
        nn.Softsign(): Band(-0.8, 0.8), nn.Hardsigmoid(): Band(0.0, 1.0),
        nn.ReLU6(): Band(None, 6.0), nn.Hardtanh(): Band(-1.0, 1.0),
        nn.Hardtanh(-2.0, 3.0): Band(-2.0, 3.0), nn.ReLU(): None, nn.GELU(): None,
        nn.Softmax(dim=-1): None, nn.Linear(2, 2): None,
    }
    for module, band in expected.items():
        assert catalog.saturation_band(module) == band, module
    # one band function for torch modules and Keras layers, by kind
    assert catalog.band("sigmoid") == Band(0.02, 0.98)
    assert catalog.band("hardtanh") == Band(-1.0, 1.0)
    assert catalog.band("relu", high=3.0) == Band(None, 3.0)  # Keras ReLU(max_value=3)
    assert catalog.band("relu") is None and catalog.band("softmax") is None
    assert catalog.band(None) is None


def test_the_fixes_take_the_gain_of_the_kinds_family():
    def gain(kind, slope=None):
        return gain_for(FollowingActivation("fc", kind, "fx", slope), "relu")

    assert gain("relu6") == (pytest.approx(SQRT2), "the relu6 that follows (fx), ReLU gain")
    assert gain("celu") == (pytest.approx(SQRT2), "the celu that follows (fx), ReLU gain")
    assert gain("hardswish")[0] == pytest.approx(SQRT2)
    assert gain("hardsigmoid") == (1.0, "the hardsigmoid that follows (fx), sigmoid gain")
    assert gain("softsign") == (pytest.approx(5 / 3), "the softsign that follows (fx), tanh gain")
    assert gain("relu") == (pytest.approx(SQRT2), "the relu that follows (fx)")
    assert gain("prelu", 0.25)[0] == pytest.approx(math.sqrt(2 / (1 + 0.25 ** 2)))
    assert gain("softmax")[0] == 1.0 and gain("linear")[0] == 1.0


def test_he_init_after_relu6_celu_hardsigmoid():
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU6(), nn.Linear(512, 512), nn.CELU(),
                          nn.Linear(512, 512), nn.Hardsigmoid(), nn.Linear(512, 4))
    follows = following_activations(model)
    assert [follows[n].kind for n in ("0", "2", "4", "6")] == [
        "relu6", "celu", "hardsigmoid", "linear"]
    changes = he_normal_(model)
    stds = [float(model[i].weight.detach().std()) for i in (0, 2, 4)]
    targets = [SQRT2 / math.sqrt(512), SQRT2 / math.sqrt(512), 1 / math.sqrt(512)]
    assert all(abs(s - t) < 0.03 * t for s, t in zip(stds, targets)), (stds, targets)
    assert "ReLU gain" in changes[0].why and "sigmoid gain" in changes[2].why


def test_functional_relu6_and_hardsigmoid_are_followed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(F.hardsigmoid(F.relu6(self.a(x))))

    follows = following_activations(Net())
    assert (follows["a"].kind, follows["a"].functional) == ("relu6", True)
    assert follows["b"].kind == "linear"


def test_the_swaps_of_fix_still_catch_relu6_and_hardsigmoid():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 8), nn.Hardsigmoid(),
                          nn.Linear(8, 2))
    x = torch.randn(16, 4)
    apply(model, Action("swap_leaky", "activation", ("1",), "dead units in `1`"), x)
    assert isinstance(model[1], nn.LeakyReLU) and model[1].negative_slope == 0.2
    apply(model, Action("swap_selu", "activation", None, "vanishing"), x)
    assert isinstance(model[3], nn.SELU)
    # the default swap still takes ReLU6 and Hardsigmoid, as when they were "relu"/"sigmoid"
    other = nn.Sequential(nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 4), nn.Hardsigmoid(),
                          nn.Linear(4, 2))
    assert len(swap_activations_(other, "elu")) == 2 and isinstance(other[1], nn.ELU)


def test_the_plan_reads_the_family_of_the_kind():
    def remedy(kind):
        return [a.remedy for a in _init_for(kind, "why", ("init", "activation", "norm"))]

    assert [remedy(k) for k in ("relu6", "celu", "hardswish", "leaky_relu", "hardsigmoid",
                                "hardtanh", "selu", "softmax", None)] == [
        ["he"], ["he"], ["he"], ["he"], ["swap_selu"], ["glorot"], ["lecun"], ["lsuv"],
        ["lsuv"]]


def test_roles_and_the_probe_see_the_same_kinds():
    assert [Unit.of("m", m).role for m in (
        nn.PReLU(), nn.BatchNorm1d(3), nn.Linear(2, 2), nn.Sequential(nn.ReLU()),
        nn.Softmax(dim=-1), nn.LSTM(2, 2), nn.Dropout())] == [
        "activation", "norm", "layer", "container", "other", "recurrent", "other"]
    unit = Unit.of("fc", nn.Conv2d(3, 8, 3))
    assert unit.fans == (27, 72) and unit.feeds and not unit.pass_through
    assert Unit.of("d", nn.FeatureAlphaDropout()).pass_through
    what = Measured.of(nn.ReLU6())
    assert (what.rectifier, what.band, what.activation) == (True, Band(None, 6.0), True)
    assert Measured.of(nn.Conv1d(2, 2, 1)).channels_first

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU6(), nn.Linear(16, 16), nn.Hardsigmoid(),
                          nn.Linear(16, 3), nn.Softmax(dim=-1))
    layers = probe(model, torch.randn(32, 8), torch.rand(32, 3)).layers
    assert (layers["1"].activation, layers["1"].role) == ("relu6", "activation")
    assert layers["1"].dead_fraction is not None and layers["1"].saturation is not None
    assert (layers["3"].activation, layers["3"].saturation is not None) == ("hardsigmoid", True)
    assert (layers["5"].activation, layers["5"].role, layers["5"].saturation) == (
        None, "other", None)
    assert [layers[n].activation_after for n in ("0", "2", "4")] == ["1", "3", None]
