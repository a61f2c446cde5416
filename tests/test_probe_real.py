"""What the probe says of real models (issue 17): a finite statistic is never printed as
inf or nan, a weight that holds NaN is named as its holder, an underflow is not 'is 0 of
that', the notes column says each thing once, a zero head is said to blind the probe, and
the report names the loss it used."""

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


def test_a_zero_head_makes_the_probe_say_it_cannot_see_the_body():
    """torchvision's VisionTransformer zero-initialises its head: no gradient reaches the
    body at step 0, and the probe said 'healthy'."""
    pytest.importorskip("torchvision", reason="needs the test extra (torchvision)")
    from gradhealth.zoo.real import real_case

    model, x, y = real_case("vit").build()
    assert not model.heads.head.weight.detach().any()
    report = probe(model, x, y)
    (blind,) = [f for f in report.findings if f.kind == "inconclusive"]
    assert blind.module == "heads.head" and blind.severity == "info"
    assert blind.message.startswith("inconclusive for the body: the head `heads.head` is zero")
    assert "inconclusive for part of the model" in to_text(report, width=300)
    with torch.no_grad():  # once the head is not zero, the body is measured and judged
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    assert not any(f.kind == "inconclusive" for f in probe(model, x, y).findings)


def test_the_report_says_which_loss_the_probe_used():
    pytest.importorskip("torchvision", reason="needs the test extra (torchvision)")
    from gradhealth.zoo.real import real_case

    model, x, y = real_case("vit").build()
    assert "(cross-entropy (integer targets))" in to_text(probe(model, x, y), width=300)
    one_hot = torch.nn.functional.one_hot(y, 10).float()
    report = probe(model, x, one_hot)
    assert report.meta["loss_name"].startswith("MSE (float targets); they look one-hot")
    assert "targets.argmax(-1)" in to_text(report, width=300).splitlines()[0]
    model, inputs = gpt2()
    assert probe(model, inputs).meta["loss_name"] == "the model's own loss"
