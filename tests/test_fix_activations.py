"""Activation swap, and graph.following_activations which it (and init, norm) rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import same_state, state_copy
from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes import following_activations, swap_activations_


def snapshot(model):
    return repr(model), state_copy(model)


def unchanged(model, snap) -> bool:
    text, state = snap
    return repr(model) == text and same_state(model, state)


# --- graph ---------------------------------------------------------------------------


def test_graph_sequential_skips_neutral_modules():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(), nn.LeakyReLU(0.2),
                          nn.Linear(8, 8), nn.Identity(), nn.Tanh(), nn.Linear(8, 2))
    found = following_activations(model)
    assert (found["0"].kind, found["0"].slope, found["0"].module) == ("leaky_relu", 0.2, "3")
    assert found["0"].passed == ("1", "2") and found["0"].how == "fx"
    assert (found["4"].kind, found["4"].module) == ("tanh", "6")
    assert found["7"].kind == "linear"


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.leaky_relu(self.fc2(x), 0.3)
        x = self.fc3(x).tanh()
        return torch.sigmoid(self.out(x))


def test_graph_functional_calls_and_output():
    found = following_activations(Functional())
    assert found["fc1"].kind == "relu" and found["fc1"].functional and found["fc1"].module is None
    assert (found["fc2"].kind, found["fc2"].slope) == ("leaky_relu", 0.3)
    assert found["fc3"].kind == "tanh"
    assert found["out"].kind == "sigmoid" and found["out"].at_output


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 8)
        self.act = nn.PReLU(init=0.1)
        self.out = nn.Linear(8, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = F.relu(self.bn(self.fc1(x)))
        if x.sum() > 0:
            x = self.drop(x)
        return self.out(self.act(self.fc2(x)))


def test_graph_forward_order_fallback_leaves_state_untouched():
    model = Branchy().train()
    state = snapshot(model)
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    found = following_activations(model, x)
    assert found["fc1"].how == "forward-order" and found["fc1"].kind == "relu"
    assert found["fc1"].functional and found["fc1"].passed == ("bn",)
    assert (found["fc2"].kind, found["fc2"].module) == ("prelu", "act")
    assert abs(found["fc2"].slope - 0.1) < 1e-6
    assert found["out"].how == "unknown"  # time order cannot prove "nothing follows"
    assert unchanged(model, state) and torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(not m._forward_hooks and not m._forward_pre_hooks
                                  for m in model.modules())
    # without example inputs the answer is marked as a guess
    assert {f.how for f in following_activations(model).values()} == {"unknown"}


def test_graph_residual_add_is_followed():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)) + x)

    assert following_activations(Block())["conv"].kind == "relu"


# --- swap ----------------------------------------------------------------------------


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)])
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 4), "act": nn.Sigmoid()})
        self.inner = nn.Module()
        self.inner.fc = nn.Linear(4, 4)
        self.inner.act = nn.Tanh()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        x = self.heads["act"](self.heads["a"](x))
        x = self.inner.act(self.inner.fc(x))
        return self.out(x)


def test_swap_keeps_names_and_other_state_nested():
    model = Nested()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changes = swap_activations_(model, "leaky_relu", slope=0.2)
    assert sorted(c.module for c in changes) == ["blocks.0.1", "blocks.1.1", "heads.act",
                                                 "inner.act"]
    modules = dict(model.named_modules())
    for name in ("blocks.0.1", "blocks.1.1", "heads.act", "inner.act"):
        assert isinstance(modules[name], nn.LeakyReLU) and modules[name].negative_slope == 0.2
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model(torch.randn(3, 4)).shape == (3, 2)
    assert "Maas" in changes[0].why


def test_swap_rrelu_defaults_and_prelu_per_channel():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    (change,) = swap_activations_(model, "rrelu")
    assert (model[1].lower, model[1].upper) == (1 / 8, 1 / 3) and "Xu et al. 2015" in change.why
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    (change,) = swap_activations_(model, "prelu", per_channel=True)
    assert model[1].weight.shape == (6,) and model[1].weight.dtype == torch.float64
    assert torch.all(model[1].weight == 0.25) and "1.weight" in change.what


def test_swap_to_selu_applies_lecun_init():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 2))
    changes = swap_activations_(model, "selu")
    assert isinstance(model[1], nn.SELU)
    assert [c.module for c in changes] == ["1", "0"] and "LeCun" in changes[1].why
    assert abs(float(model[0].weight.detach().var()) - 1 / 1024) < 0.05 / 1024


def test_swap_refuses_functional_without_changing_anything():
    model = Functional()
    model.act = nn.ReLU()  # an unused module must not be swapped either: atomic refusal
    snap = snapshot(model)
    with pytest.raises(FixRefusedError, match="fc1.*functional relu"):
        swap_activations_(model)
    assert unchanged(model, snap)


def test_swap_leaves_output_nonlinearity_unless_named_and_shared_modules():
    act = nn.Tanh()
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 1),
                          nn.Sigmoid())
    changes = swap_activations_(model, "elu", alpha=0.5)
    assert len(changes) == 1  # one shared module, replaced at both places by one new module
    assert model[1] is model[3] and isinstance(model[1], nn.ELU) and model[1].alpha == 0.5
    assert isinstance(model[5], nn.Sigmoid)
    swap_activations_(model, "gelu", names=["5"])
    assert isinstance(model[5], nn.GELU)
    with pytest.raises(FixRefusedError, match="found none"):
        swap_activations_(model, "gelu", from_=("relu",))
    with pytest.raises(ConfigError):
        swap_activations_(model, "swish")
    with pytest.raises(ConfigError, match="Valid names"):
        swap_activations_(model, "relu", from_=("elu",), names=["0"])
