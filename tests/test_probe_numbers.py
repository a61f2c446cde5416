"""Numbers that stay true on real models (issue 17): a finite statistic is never printed as
inf or nan, a weight that holds NaN is named as its holder, an underflow is not 'is 0 of
that', and the notes column says each thing once."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from gradhealth import probe
from gradhealth.report.terminal import to_text

transformers = pytest.importorskip("transformers", reason="needs the test extra")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300,
                                  n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "labels": ids}


def test_out_rms_of_huge_finite_activations_is_finite():
    """~5e18 float32 activations: their squares pass float32's range, the RMS does not."""
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    with torch.no_grad():
        model[2].weight.mul_(2e19)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with torch.no_grad():
        h = model[:3](x)
    assert torch.isfinite(h).all() and not torch.isfinite((h * h).sum())
    report = probe(model, x, y)
    expected = float(h.double().pow(2).mean().sqrt())
    assert report.layers["2"].out_rms == pytest.approx(expected, rel=1e-4)
    assert all(math.isfinite(s.out_rms) for s in report.layers.values() if s.out_rms)
    table = to_text(report)
    assert " inf " not in table and " nan " not in table


def test_a_weight_that_holds_nan_is_named_as_its_holder_not_an_operation():
    model, inputs = gpt2()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 5] = float("nan")
    report = probe(model, inputs)
    (finding,) = [f for f in report.findings if f.severity != "info"]
    assert finding.module == "transformer.h.1.mlp.c_fc"
    assert finding.evidence["pass"] == "parameters"
    assert finding.evidence["nonfinite_parameters"] == 1
    assert "hold 1 NaN/Inf" in finding.message and "from finite inputs" not in finding.message
    assert "checkpoint" in finding.remedy and "log or sqrt" not in finding.remedy
    text = to_text(report)
    assert "nonfinite nonfinite" not in text and "NaN/Inf in weights 1" in text


def test_an_underflowed_gradient_is_not_called_0_of_that():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(32, 32), nn.Sigmoid())],
                          nn.Linear(32, 4))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(1e-3)
    report = probe(model, torch.randn(16, 32), torch.randint(0, 4, (16,)))
    (f,) = [f for f in report.findings if f.kind == "vanishing"]
    assert f.evidence["grad_ratio_input_to_output"] == 0.0  # float32 underflow
    assert " is 0 of " not in f.message and "underflows to 0" in f.message
