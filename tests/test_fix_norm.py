"""BatchNorm insertion: both positions, editable structures, atomic refusals."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import same_state, state_copy
from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes import insert_batchnorm_


def snapshot(model):
    return repr(model), state_copy(model)


def unchanged(model, snap) -> bool:
    text, state = snap
    return repr(model) == text and same_state(model, state)


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_before_activation_in_numbered_sequential():
    model = mlp()
    x = torch.randn(5, 4)
    changes = insert_batchnorm_(model, example_inputs=x)
    types = [type(m) for m in model]
    assert types == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU,
                     nn.Linear]
    assert [c.module for c in changes] == ["1", "4"]
    assert "2.weight -> 3.weight" in changes[0].what  # renumbering is reported
    assert "Ioffe & Szegedy" in changes[0].why
    assert model(x).shape == (5, 2)


def test_after_activation_named_sequential_keeps_other_keys():
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), act1=nn.Tanh(), fc2=nn.Linear(8, 2)))
    keys = set(model.state_dict())
    (change,) = insert_batchnorm_(model, position="after_activation")
    assert list(model._modules) == ["fc1", "act1", "act1_bn", "fc2"]
    assert change.module == "act1_bn" and "renamed" not in change.what
    assert keys < set(model.state_dict())


def test_custom_module_layer_wrapped_and_key_change_reported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.act = nn.ReLU()
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.act(self.conv(x)).mean((2, 3)))

    net = Net().double().eval()
    (change,) = insert_batchnorm_(net, example_inputs=torch.randn(2, 3, 8, 8, dtype=torch.double))
    assert isinstance(net.conv, nn.Sequential) and isinstance(net.conv[1], nn.BatchNorm2d)
    assert net.conv[1].weight.dtype == torch.float64 and not net.conv[1].training
    assert change.module == "conv.1" and "conv.weight -> conv.0.weight" in change.what


def test_existing_batchnorm_is_skipped_and_nothing_left_refuses():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    snap = snapshot(model)
    with pytest.raises(FixRefusedError, match="found none"):
        insert_batchnorm_(model)
    assert unchanged(model, snap)


def test_refuses_functional_activation_after_activation_bit_identical():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Sequential(nn.Linear(4, 8))
            self.fc2 = nn.Linear(8, 8)
            self.act = nn.ReLU()
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.act(self.fc2(F.relu(self.fc1(x)))))

    net = Net()
    snap = snapshot(net)
    with pytest.raises(FixRefusedError, match="functional relu"):
        insert_batchnorm_(net, position="after_activation")  # fc2 alone would be editable
    assert unchanged(net, snap)


def test_refuses_linear_on_sequence_inputs_bit_identical():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    snap = snapshot(model)
    with pytest.raises(FixRefusedError, match="LayerNorm"):
        insert_batchnorm_(model, example_inputs=torch.randn(2, 7, 4))
    assert unchanged(model, snap)
    with pytest.raises(ConfigError):
        insert_batchnorm_(model, position="middle")
    with pytest.raises(ConfigError, match="Valid names"):
        insert_batchnorm_(model, names=["1"])
