"""Functional activations seen by the probe (issue 14): judged like modules, named
module/kind#k, never seen by the watch's steps; the probe's promise kept with the mode on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradhealth._probe as probe_module
from conftest import no_hooks_left, same_state, state_copy
from gradhealth import probe, watch
from gradhealth.measure import functional


class Gated(nn.Module):
    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(16, 32)
        self.gate = nn.Linear(32, 32)
        self.block = nn.Sequential(nn.Linear(32, 32))
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            self.gate.bias.fill_(bias)

    def forward(self, x):
        h = F.relu(self.fc(x))
        h = torch.sigmoid(self.gate(h)) * h
        h = F.dropout(h, 0.2, self.training)
        return self.head(torch.tanh(self.block(h)))


def batch(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_functional_activations_are_units_named_after_their_module():
    report = probe(Gated(), *batch())
    units = {n: s for n, s in report.layers.items() if s.type.startswith("F.")}
    assert set(units) == {"relu#0", "sigmoid#0", "tanh#0"}
    assert units["relu#0"].role == "activation" and units["relu#0"].dead_fraction is not None
    assert units["sigmoid#0"].saturation is not None
    assert report.layers["gate"].inputs_from == ("relu#0",)  # the chain runs through them
    assert not report.findings


def test_a_saturated_functional_sigmoid_is_found_by_name():
    report = probe(Gated(bias=-8.0), *batch())
    # the closed gate (sigmoid ~3e-4) also starves the layer below it of gradient
    assert {(f.kind, f.module) for f in report.findings} == {("saturation", "sigmoid#0"),
                                                             ("vanishing", "fc")}
    assert report.layers["sigmoid#0"].saturation == pytest.approx(1.0)


def test_dead_functional_relu_units_are_found_by_name():
    model = Gated()
    with torch.no_grad():
        model.fc.bias[:24] = -100.0
    report = probe(model, *batch())
    assert [(f.kind, f.module) for f in report.findings] == [("dead_units", "relu#0")]
    assert report.layers["relu#0"].dead_fraction == pytest.approx(0.75)


def test_inside_a_module_the_unit_carries_the_modules_name():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return F.gelu(self.fc(x)) + F.gelu(x)

    model = nn.Sequential(Block(), nn.Linear(16, 3))
    report = probe(model, *batch())
    assert {"0/gelu#0", "0/gelu#1"} <= set(report.layers)


def test_an_activation_modules_own_call_and_a_custom_activations_parts_are_not_units():
    class QuickGELU(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), QuickGELU(),
                          nn.Linear(32, 3))
    report = probe(model, *batch())
    assert not [n for n, s in report.layers.items() if s.type.startswith("F.")]


def test_the_probe_leaves_everything_as_it_was_with_the_mode_on():
    model = Gated()
    model.block.append(nn.BatchNorm1d(32))
    model.eval()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    saved, grads = state_copy(model), {n: p.grad.clone() for n, p in model.named_parameters()}
    modes, rng = [m.training for m in model.modules()], torch.get_rng_state()
    probe(model, x, y)
    assert same_state(model, saved)
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert no_hooks_left(model) and torch._C._len_torch_function_stack() == 0


def test_the_mode_is_gone_when_the_model_raises():
    class Fails(Gated):
        def forward(self, x):
            torch.sigmoid(x)
            raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        probe(Fails(), *batch())
    assert torch._C._len_torch_function_stack() == 0
    assert torch.sigmoid(torch.zeros(1)).item() == 0.5


def test_the_watchs_steps_never_observe_functions(monkeypatch):
    seen = []
    monkeypatch.setattr(functional.Functions, "__call__",
                        lambda self, *a: seen.append(a[0]))
    model = Gated()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch()
    with watch(model, optimizer=opt, sample_every=2):
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert seen == []
    probe(model, x, y)
    assert seen  # the probe does


def test_a_finite_pass_is_measured_once_a_nonfinite_one_twice(monkeypatch):
    passes = []
    original = probe_module._measured_pass

    def counted(*args, **kwargs):
        passes.append(kwargs["fast"])
        return original(*args, **kwargs)

    monkeypatch.setattr(probe_module, "_measured_pass", counted)
    probe(Gated(), *batch())
    assert passes == [True]
    x, y = batch()
    x[0, 0] = float("nan")
    report = probe(Gated(), x, y)
    assert passes == [True, True, False]
    assert report.layers["fc"].nonfinite_out == 32  # counted exactly, not flagged
