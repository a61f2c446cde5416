"""Diagnosis against networks whose pathology is a mathematical fact at initialisation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradhealth import probe
from gradhealth.rules import depth
from gradhealth.zoo import CASES, case, matches, mlp, score


@pytest.fixture(scope="module")
def results():
    out = []
    for c in CASES:
        model, x, y = c.build()
        out.append((c, probe(model, x, y)))
    return out


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.name)
def test_case_diagnosed_exactly(c, results):
    report = dict((k.name, r) for k, r in results)[c.name]
    alarms = [f for f in report.findings if f.severity != "info"]
    for expected in c.expected:
        assert any(matches(expected, f.kind, f.module) for f in alarms), (
            f"{c.name}: missed {expected}; got {[(f.kind, f.module) for f in alarms]}")
    for f in alarms:
        assert any(matches(e, f.kind, f.module) for e in c.expected), (
            f"{c.name}: unexpected {f.kind} in {f.module!r}: {f.message}")
    if c.healthy:
        assert report.ok and not report.findings


def test_accuracy_over_the_zoo(results):
    s = score([(c, r.findings) for c, r in results])
    assert s.recall >= 0.95 and s.precision >= 0.95
    assert s.false_alarms_on_healthy == 0


def test_zoo_has_the_required_kinds():
    kinds = {k for c in CASES for k, _ in c.expected}
    assert kinds == {"vanishing", "exploding", "saturation", "dead_units", "nonfinite"}
    assert sum(c.healthy for c in CASES) >= 6


def test_relu_glorot_trap_weight_grads_flat_but_dl_dx_collapses(results):
    """Weight-gradient norms stay flat while dL/dx collapses toward the input
    (docs/science.md#the-trap-flat-weight-gradients)."""
    model, x, y = case("relu-glorot-30").build()
    F.cross_entropy(model(x), y).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)][:-1]
    w_ratio = (linears[0].weight.grad.norm() / linears[-1].weight.grad.norm()).item()
    report = dict((c.name, r) for c, r in results)["relu-glorot-30"]
    flow = report.flow()[:-1]
    x_ratio = flow[0].grad_rms / flow[-1].grad_rms
    assert 0.2 < w_ratio < 5  # flat: a rule on weight-gradient norms sees nothing
    assert x_ratio < 1e-3  # dL/dx: ~2^-14 over 29 layers (theory 2^-14.5)
    assert report.by_kind("vanishing")[0].module == "0"


def test_remedies_are_concrete(results):
    by = dict((c.name, r) for c, r in results)
    assert "kaiming_normal_" in by["relu-glorot-30"].findings[0].remedy
    assert "nonlinearity='relu'" in by["relu-glorot-30"].findings[0].remedy
    assert "xavier" in by["tanh-default-30"].findings[0].remedy
    assert "BatchNorm1d" in by["sigmoid-default-10"].findings[0].remedy
    assert "LeakyReLU" in by["dead-relu-layer"].findings[0].remedy
    assert "clip_grad_norm_" in by["rnn-exploding"].findings[0].remedy
    for _, report in results:
        for f in report.findings:
            assert f.evidence.get("threshold") is not None or f.kind == "nonfinite"


@pytest.mark.parametrize("n", [2, 3, 4, 6, 10])
def test_sigmoid_default_init_is_found_at_every_depth_from_two(n):
    # three hidden layers fell between the head-referenced chain (1-2) and the thirds (4+)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    report = probe(mlp(n, 128, nn.Sigmoid, None), torch.randn(256, 128, generator=g),
                   torch.randint(0, 10, (256,), generator=g))
    assert [f.kind for f in report.findings] == ["vanishing"]


NORMALISED = ["bn-relu-x1000-3", "ln-gelu-pixels-4", "bn-relu-x1e-3-8", "gn-cnn-pixels-5",
              "bn-cnn-x1e-3-4"]


@pytest.mark.parametrize("name", NORMALISED)
def test_normalised_controls_are_read_after_their_norms(name, results):
    report = dict((c.name, r) for c, r in results)[name]
    flow = report.flow()[:-1]
    p = depth.profile(report.layers)
    assert {a for a, _ in p.read_after} == {s.name for s in flow}  # every hidden layer
    raw = flow[0].grad_norm / flow[-1].grad_norm  # what the rule read before: 1e-3 to 1e3
    assert raw < 1e-2 or raw > 1e2
    assert 0.1 < p.ratio < 20
