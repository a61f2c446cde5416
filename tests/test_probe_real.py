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


def test_a_zero_head_is_said_and_the_body_judged_through_a_random_one():
    """torchvision's VisionTransformer zero-initialises its head: no gradient reaches the
    body at step 0, and the probe said 'healthy' having judged nothing."""
    pytest.importorskip("torchvision", reason="needs the test extra (torchvision)")
    from gradhealth.zoo.real import real_case

    model, x, y = real_case("vit").build()
    head = model.heads.head.weight
    assert not head.detach().any()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    report = probe(model, x, y)
    (said,) = [f for f in report.findings if f.kind in ("zero_head", "inconclusive")]
    assert said.kind == "zero_head" and said.module == "heads.head" and said.severity == "info"
    assert "measured with a temporary random head" in said.message
    assert report.meta["random_head"] == "heads.head"
    body = [s for s in report.flow() if s.name != "heads.head"]
    assert body and all(s.grad_norm for s in body)  # every layer below got a gradient
    # the original weight object is back, untouched
    assert model.heads.head.weight is head and not head.detach().any()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def conv_net() -> nn.Module:
    """A small CNN whose 1x1 conv head has a zero weight and a non-zero bias."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    nn.init.zeros_(model[4].weight)
    return model


def test_a_zero_conv_head_is_replaced_too_and_no_vanishing_is_claimed():
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    report = probe(conv_net(), x, y)
    assert [f.kind for f in report.findings] == ["zero_head"]
    assert report.layers["0"].grad_norm > 0


def test_a_zero_head_that_cannot_be_replaced_makes_the_probe_inconclusive(monkeypatch):
    import gradhealth._probe as probe_module

    monkeypatch.setattr(probe_module, "replaceable", lambda model, name: None)
    model, x, y = conv_net(), torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    report = probe(model, x, y)
    # the zero gradient below the head is the head's doing: no 'vanishing' is claimed
    (blind,) = report.findings
    assert blind.kind == "inconclusive" and blind.module == "4" and blind.severity == "info"
    assert blind.message.startswith("inconclusive for the body: the head `4` is zero")
    assert "inconclusive for part of the model" in to_text(report, width=300)
    with torch.no_grad():  # once the head is not zero, the body is measured and judged
        nn.init.normal_(model[4].weight, std=0.1)
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
