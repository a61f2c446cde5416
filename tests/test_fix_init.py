"""Initialisers against their formulas (docs/science.md#signal-propagation-at-initialisation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes import (
    Change,
    glorot_normal_,
    glorot_uniform_,
    he_normal_,
    he_uniform_,
    lecun_normal_,
    lsuv_,
    orthogonal_,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def var(t: torch.Tensor) -> float:
    return float(t.detach().double().var())


def close(measured: float, target: float, rel: float = 0.05) -> bool:
    return abs(measured - target) <= rel * target


def test_he_normal_relu_1024():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    changes = he_normal_(model)
    assert close(var(model[0].weight), 2 / 1024)
    assert torch.count_nonzero(model[0].bias) == 0
    assert all(isinstance(c, Change) for c in changes)
    assert "bias = 0" in changes[0].what and "relu" in changes[0].why and "fx" in changes[0].why
    # the output layer is followed by nothing: gain 1
    assert close(var(model[2].weight), 1 / 1024, rel=0.15)


def test_he_uniform_leaky_slope_gain():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.LeakyReLU(0.3), nn.Linear(1024, 4))
    he_uniform_(model)
    assert close(var(model[0].weight), 2 / ((1 + 0.3**2) * 1024))
    bound = math.sqrt(3 * 2 / ((1 + 0.3**2) * 1024))
    assert float(model[0].weight.detach().abs().max()) <= bound


def test_he_fan_out_mode():
    model = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2))
    he_normal_(model, mode="fan_out")
    assert close(var(model[0].weight), 2 / 2048)


def test_he_conv_and_prelu_slope():
    model = nn.Sequential(nn.Conv2d(64, 128, 3), nn.PReLU(init=0.5), nn.Conv2d(128, 8, 1))
    he_uniform_(model)
    assert close(var(model[0].weight), 2 / ((1 + 0.25) * 64 * 9))


def test_he_functional_leaky_slope_found_by_fx():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1024, 1024)
            self.out = nn.Linear(1024, 3)

        def forward(self, x):
            return self.out(F.leaky_relu(self.fc(x), negative_slope=0.5))

    net = Net()
    (change, _) = he_normal_(net)
    assert close(var(net.fc.weight), 2 / (1.25 * 1024))
    assert "leaky_relu" in change.why and "0.5" in change.why


def test_glorot_uniform_tanh_gain_and_bound():
    model = nn.Sequential(nn.Linear(600, 400), nn.Tanh(), nn.Linear(400, 2))
    glorot_uniform_(model)
    gain = 5 / 3
    assert close(var(model[0].weight), gain**2 * 2 / 1000)
    assert float(model[0].weight.detach().abs().max()) <= gain * math.sqrt(6 / 1000)


def test_glorot_normal_without_activation_has_gain_one():
    model = nn.Sequential(nn.Linear(800, 800), nn.Linear(800, 800))
    glorot_normal_(model)
    assert close(var(model[0].weight), 2 / 1600)


def test_lecun_normal_and_single_module():
    layer = nn.Linear(1024, 512)
    (change,) = lecun_normal_(layer)
    assert change.module == ""
    assert close(var(layer.weight), 1 / 1024)
    he_normal_(layer)  # bare layer: following activation unknown, ReLU assumed
    assert close(var(layer.weight), 2 / 1024)


def test_names_subset_leaves_other_layers_untouched():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changes = he_normal_(model, names=["2"])
    assert [c.module for c in changes] == ["2"]
    assert torch.equal(model[0].weight, before["0.weight"])
    assert not torch.equal(model[2].weight, before["2.weight"])
    with pytest.raises(ConfigError, match="Valid names"):
        he_normal_(model, names=["1"])
    with pytest.raises(ConfigError):
        he_normal_(model, mode="fan_avg")
    with pytest.raises(FixRefusedError):
        he_normal_(nn.Sequential(nn.ReLU()))


def test_half_precision_weights_drawn_in_float32():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU()).to(torch.bfloat16)
    he_normal_(model)
    assert model[0].weight.dtype == torch.bfloat16
    assert close(var(model[0].weight), 2 / 1024)


def test_orthogonal_linear_with_gain_and_lstm_blocks():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    orthogonal_(model)
    w = model[0].weight.detach().double()
    assert torch.allclose(w @ w.T, 2 * torch.eye(64, dtype=torch.double), atol=1e-5)
    lstm = nn.LSTM(16, 32, num_layers=2)
    (change,) = orthogonal_(lstm)
    assert "gate block" in change.why or "gate block" in change.what
    for name, p in lstm.named_parameters():
        if name.startswith("weight_hh"):
            for block in p.detach().double().chunk(4, 0):
                assert torch.allclose(block @ block.T, torch.eye(32, dtype=torch.double),
                                      atol=1e-5)
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0


def _output_variances(model, x):
    out = {}
    hooks = [m.register_forward_hook(
                 lambda m, a, o, n=n: out.setdefault(n, float(o.var())) and None)
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()
        model(x)
    for h in hooks:
        h.remove()
    return out


def test_lsuv_deep_mlp_unit_variance_and_state_untouched():
    layers = []
    for _ in range(12):
        layers += [nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Tanh(), nn.Dropout(0.1)]
    model = nn.Sequential(*layers, nn.Linear(64, 5))
    model.train()
    x = torch.randn(256, 64) * 3
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    rng = torch.get_rng_state()
    changes = lsuv_(model, x)
    assert len(changes) == 13 and "LSUV" in changes[0].why
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model[3].training
    for k, v in buffers.items():
        assert torch.equal(model.state_dict()[k], v)
    assert all(not m._forward_hooks for m in model.modules())
    for name, v in _output_variances(model, x).items():
        assert abs(v - 1) < 0.05, (name, v)


def test_lsuv_small_cnn():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    x = torch.randn(32, 3, 8, 8)
    lsuv_(model, x)
    variances = _output_variances(model, x)
    assert len(variances) == 3
    assert all(abs(v - 1) < 0.05 for v in variances.values()), variances


def test_lsuv_refuses_dead_input_and_restores_weights():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FixRefusedError, match="variance"):
        lsuv_(model, torch.zeros(16, 8))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_remedies_given_something_else_than_a_model_or_bad_inputs_say_so():
    from gradhealth.errors import InputMismatchError
    from gradhealth.fixes import insert_batchnorm_, swap_activations_

    for remedy in (he_normal_, glorot_uniform_, lecun_normal_, orthogonal_, swap_activations_,
                   insert_batchnorm_):
        with pytest.raises(ConfigError, match="expects the model"):
            remedy(42)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(InputMismatchError, match="lsuv_: the model failed on the given inputs"):
        lsuv_(model, torch.randn(8, 5))
    with pytest.raises(InputMismatchError, match="example_inputs"):
        insert_batchnorm_(model, example_inputs=torch.randn(8, 5))
    assert len(model) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
