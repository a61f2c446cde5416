"""The transformer-era signals during training: measured on sampled steps only, judged
into findings by the watch, and the update-to-weight ratio's verdict."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradhealth as gh
from gradhealth.lab import wortsman2023
from gradhealth.lab.lm import TinyLM
from gradhealth.measure import attention
from gradhealth.rules import update_ratio

NEW_KINDS = {"attention_logit_growth", "logit_divergence", "adam_epsilon", "update_ratio"}


def train(model, steps=12, lr=1e-3, every=4, optimizer=torch.optim.AdamW):
    torch.manual_seed(0)
    tokens = torch.randint(0, 32, (64, 17))
    opt = optimizer(model.parameters(), lr=lr)
    with gh.watch(model, opt, sample_every=every, flush_every=every) as w:
        for step in range(steps):
            batch = tokens[(step * 8) % 64:(step * 8) % 64 + 8]
            opt.zero_grad()
            loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 32), batch[:, 1:].reshape(-1))
            loss.backward()
            w.log_loss(loss)
            opt.step()
        found = [(f.kind, f.module, s) for f, s in zip(w.journal.findings, w.journal.finding_steps)]
    return found


def lm(scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    model = TinyLM(vocab=32, seq=16, d=64, heads=4, layers=2)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.in_proj_weight[:128] *= scale
    return model


def test_a_healthy_transformer_raises_none_of_the_new_findings():
    found = train(lm())
    assert not {k for k, _, _ in found} & NEW_KINDS, found
    assert torch._C._len_torch_function_stack() == 0


def test_grown_query_key_weights_are_named_at_the_first_sampled_step():
    found = train(lm(scale=20.0))
    grown = [(m, s) for k, m, s in found if k == "attention_logit_growth"]
    assert ("blocks.0.attn", 0) in grown and ("blocks.1.attn", 0) in grown


def test_attention_is_observed_on_sampled_steps_only(monkeypatch):
    starts = []
    original = attention.AttentionTap.start

    def counting(self):
        starts.append(1)
        original(self)

    monkeypatch.setattr(attention.AttentionTap, "start", counting)
    train(lm(), steps=12, every=4)
    assert len(starts) == 3  # steps 0, 4 and 8


def test_an_enormous_step_is_an_update_ratio_finding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 32))
    found = train(model, steps=8, lr=200.0, optimizer=torch.optim.SGD)
    ratios = [(m, s) for k, m, s in found if k == "update_ratio"]
    assert ratios and ratios[0][1] == 0


def test_update_ratio_verdicts():
    assert update_ratio.judge(3, {"a": 0.04, "b": 0.001, "c": 0.002, "d": math.nan}) == []
    assert update_ratio.judge(3, {"a": 0.3, "b": 0.2, "c": 0.25}) == []  # all alike
    warn, = update_ratio.judge(3, {"a": 0.3, "b": 0.02, "c": 0.01})
    assert warn.severity == "warning" and warn.module == "a" and warn.modules == ("a",)
    assert warn.evidence["peer_factor"] == pytest.approx(15)
    crit, = update_ratio.judge(3, {"a": 2.0, "b": 1.5, "c": 0.001})
    assert crit.severity == "critical" and crit.modules == ("a", "b")
    assert "lower the learning rate" in crit.remedy
    # stalled peers (vanishing under SGD): one layer ahead of them is no update-ratio verdict
    stalled = {str(i): 1e-6 for i in range(7)} | {"out": 0.3}
    assert update_ratio.judge(3, stalled) == []
    assert len(update_ratio.judge(3, stalled | {"3": 1e-3, "4": 1e-3, "5": 1e-3,
                                                "6": 1e-3})) == 1  # peers that move
    # a healthy head at its first SGD step: 25x its peers, 0.067 of its norm
    assert update_ratio.judge(0, {str(i): 0.0027 for i in range(6)} | {"out": 0.067}) == []
    assert update_ratio.judge(3, stalled | {"out": 1.2})[0].severity == "critical"


def test_divergence_is_a_lasting_rise_of_the_smoothed_loss():
    flat = np.linspace(3.0, 2.0, 200)
    assert wortsman2023.diverged_at(flat) is None
    bumpy = flat + 0.05 * np.sin(np.arange(200))  # noise is not divergence
    assert wortsman2023.diverged_at(bumpy) is None
    risen = flat.copy()
    risen[120:] += np.minimum(np.arange(80) * 0.05, 1.0)  # 0.05 nats a step, then flat
    at = wortsman2023.diverged_at(risen)
    assert at is not None and 120 < at < 160
    broken = flat.copy()
    broken[50] = math.inf
    assert wortsman2023.diverged_at(broken) == 50
    assert wortsman2023.sensitivity({1: 2.0, 2: 9.0}, best=1.5, initial=3.0) == pytest.approx(1.0)


def test_the_runs_that_went_wrong_diverged_or_ended_behind_their_qk_layernorm_twin():
    """wortsman2023's claim about the watch covers a run without qk-layernorm whose loss
    rose (diverged) or that ended ``BEHIND`` its twin with it; a stalled run (no rise, as
    the 1e-1 baseline is on some CPUs) counts, a run level with its twin does not."""
    behind = wortsman2023.BEHIND
    finals = {("baseline", 0.01): 1.95, ("qk-layernorm", 0.01): 1.93,
              ("z-loss", 0.01): 1.96, ("qk-layernorm + z-loss", 0.01): 1.93,
              ("baseline", 0.1): 2.23 + behind + 0.01, ("qk-layernorm", 0.1): 2.23,
              ("z-loss", 0.1): 2.25, ("qk-layernorm + z-loss", 0.1): 2.23}
    diverged: dict[tuple[str, float], int | None] = dict.fromkeys(finals)
    assert wortsman2023.went_wrong(finals, diverged) == [("baseline", 0.1)]  # stalled behind
    diverged[("z-loss", 0.1)] = 99  # rose, though it ended near its twin
    diverged[("qk-layernorm", 0.1)] = 60  # a qk-layernorm run is never in this claim
    assert wortsman2023.went_wrong(finals, diverged) == [("baseline", 0.1), ("z-loss", 0.1)]
    finals[("baseline", 0.1)] = 2.23 + behind - 0.01
    assert wortsman2023.went_wrong(finals, diverged) == [("z-loss", 0.1)]
    assert wortsman2023.warned(40, None) and wortsman2023.warned(40, 99)
    assert not wortsman2023.warned(None, None) and not wortsman2023.warned(None, 99)
    assert not wortsman2023.warned(99, 99) and not wortsman2023.warned(120, 99)
