"""gh.guard: skipped steps leave weights and optimizer state bit-identical; producers named."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import no_hooks_left
from gradhealth import Guard, guard, load, watch
from gradhealth.errors import ConfigError

OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
}


class Log(nn.Module):
    """log(x) while armed: NaN for negative inputs (a forward producer)."""

    armed = False

    def forward(self, x):
        return torch.log(x) if self.armed else x


class RootMeanSquare(nn.Module):
    """While armed, x + sqrt(mean((0*x)^2)): finite forward, NaN backward (sqrt'(0) * 0)."""

    armed = False

    def forward(self, x):
        return x + torch.sqrt((x * 0).pow(2).mean(dim=-1, keepdim=True)) if self.armed else x


def net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), Log(), RootMeanSquare(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def batch(i: int):
    g = torch.Generator().manual_seed(i)
    return torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[list, list]:
    params = [p.detach().clone() for p in model.parameters()]
    state = [copy.deepcopy(dict(opt.state[p])) for p in model.parameters()]
    return params, state


def equal(a, b) -> bool:
    """Bit-identical, through the lists and dicts of an optimizer's state (LBFGS)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b


def identical(model: nn.Module, opt: torch.optim.Optimizer, saved: tuple[list, list]) -> bool:
    params, state = saved
    return (all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
            and all(equal(dict(opt.state[p]), s) for p, s in zip(model.parameters(), state)))


def train(model, opt, g, steps: int, poison: dict[int, str],
          loss_scale: dict[int, float] | None = None):
    """Train ``steps`` steps; returns {step: weights and state identical across the step}."""
    loss_scale = loss_scale or {}
    kept = {}
    for i in range(steps):
        for m in model.modules():
            if hasattr(m, "armed"):
                m.armed = poison.get(i) == type(m).__name__
        x, y = batch(i)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) * loss_scale.get(i, 1.0)
        loss.backward()
        g.log_loss(loss)
        saved = snapshot(model, opt)
        opt.step()
        kept[i] = identical(model, opt, saved)
    return kept


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@pytest.mark.parametrize("poison", ["Log", "RootMeanSquare"])
def test_a_nan_step_is_skipped_untouched_named_and_training_goes_on(tmp_path, make, poison):
    torch.manual_seed(0)
    model = net()
    opt = make(model.parameters())
    with guard(model, opt, store=tmp_path / "r.db", flush_every=4, sample_every=4) as g:
        kept = train(model, opt, g, 9, {6: poison})
    assert kept == {i: i == 6 for i in range(9)}  # only step 6 left everything as it was
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert g.skipped == 1
    named = {"Log": "3", "RootMeanSquare": "4"}[poison]
    [finding] = [f for f in g.findings if f.kind == "nonfinite"]
    assert finding.module == named and finding.severity == "critical"
    assert finding.evidence["step"] == 6
    assert finding.evidence["pass"] == ("forward" if poison == "Log" else "backward")
    run = load(tmp_path / "r.db")
    assert [(s.step, s.module) for s in run.skipped] == [(6, named)]
    np.testing.assert_array_equal(run.steps["skipped"], [i == 6 for i in range(9)])
    np.testing.assert_array_equal(run.steps["nonfinite"], [i == 6 for i in range(9)])
    assert run.finding_steps == [6]
    assert no_hooks_left(model)


def test_a_spike_is_skipped_and_blamed_on_a_module():
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with guard(model, opt, flush_every=10, sample_every=None) as g:
        kept = train(model, opt, g, 40, {}, loss_scale={33: 1e4})
    assert [i for i, same in kept.items() if same] == [33]
    [spike] = g.findings
    assert spike.kind == "spike" and spike.evidence["step"] == 33 and spike.evidence["skipped"]
    assert spike.evidence["series"] == ["global_norm", "loss"]
    assert spike.module in ("0", "2", "5", "7") and spike.evidence["global_norm_z"] > 100
    assert g.summary()["spikes"] >= 1 and g.skipped == 1


@pytest.mark.parametrize("defer", [256, 0], ids=["floats", "row"])
def test_the_guard_decides_alike_on_host_floats_and_on_a_buffer_row(monkeypatch, defer):
    """On a CPU the guard reads a step's norms as floats, or from the buffer's row past
    ``DEFER_PARAMS`` parameter tensors: the same skips (a NaN, a spike) either way."""
    from gradhealth.training import recorder

    monkeypatch.setattr(recorder, "DEFER_PARAMS", defer)
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with guard(model, opt, flush_every=10, sample_every=None) as g:
        assert g.recorder._host == (defer > 0)
        kept = train(model, opt, g, 40, {29: "Log"}, loss_scale={35: 1e4})
    assert [i for i, same in kept.items() if same] == [29, 35]
    assert sorted(f.kind for f in g.findings) == ["nonfinite", "spike"]
    assert g.skipped == 2


def test_without_guard_spikes_and_nan_are_reported_not_skipped():
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, opt, flush_every=10, sample_every=None) as w:
        kept = train(model, opt, w, 40, {36: "Log"}, loss_scale={33: 1e4})
    assert not any(kept.values())
    kinds = [(f.kind, f.evidence["step"]) for f in w.findings]
    assert ("spike", 33) in kinds and ("nonfinite", 36) in kinds
    assert w.skipped == 0 and w.summary()["nonfinite_steps"] >= 1


class DecayEverything(torch.optim.Optimizer):
    """Not from torch.optim: decays every weight, with or without a gradient, and counts."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["calls"] = state.get("calls", 0) + 1
                with torch.no_grad():
                    p.mul_(0.99)
                    if p.grad is not None:
                        p.sub_(group["lr"] * p.grad)


def test_a_foreign_optimizer_is_restored_from_a_copy():
    torch.manual_seed(0)
    model = net()
    opt = DecayEverything(model.parameters())
    with guard(model, opt, sample_every=None) as g:
        kept = train(model, opt, g, 5, {3: "Log"})
    assert kept == {i: i == 3 for i in range(5)} and g.skipped == 1


def test_explicit_step_reports_the_decision():
    model = net()
    decisions = []
    with guard(model, sample_every=None) as g:
        for i in range(3):
            model[3].armed = i == 1
            nn.functional.cross_entropy(model(batch(i)[0]), batch(i)[1]).backward()
            decisions.append(g.step())
            model.zero_grad()
    assert decisions == [True, False, True]


def test_grad_scaler_calibration_is_not_divergence(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)  # overflows for a few steps
    kept = []
    with guard(model, opt, store=tmp_path / "r.db", scaler=scaler, sample_every=3) as g:
        for i in range(10):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(batch(i)[0]), batch(i)[1]) * 100
            scaler.scale(loss).backward()
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            kept.append(all(torch.equal(p, b) for p, b in zip(model.parameters(), before)))
    assert "update" not in vars(scaler)
    calibrating = [i for i, same in enumerate(kept) if same]
    assert calibrating == list(range(len(calibrating))) and 1 <= len(calibrating) < 10
    assert g.skipped == 0 and g.summary()["amp_skipped"] == len(calibrating)
    assert not [f for f in g.findings if f.severity != "info"]
    run = load(tmp_path / "r.db")
    assert [s.step for s in run.skipped] == calibrating
    assert all(s.reason.startswith("amp_overflow") for s in run.skipped)
    np.testing.assert_array_equal(run.steps["step"], np.arange(10))
    finite = run.steps["global_norm"][len(calibrating):]
    assert np.isfinite(finite).all() and finite.max() < 1e3  # measured after unscale_


def test_grad_scaler_divergence_is_found_and_named():
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    model[3].armed = True  # NaN every step: GradScaler halves the scale each time
    with guard(model, opt, scaler=scaler, sample_every=None) as g:
        for i in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(batch(i)[0]), batch(i)[1])
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert g.skipped == 0 and g.summary()["amp_skipped"] == 5
    kinds = [(f.kind, f.module, f.evidence.get("pass")) for f in g.findings]
    assert ("nonfinite", "", "amp") in kinds and ("nonfinite", "3", "forward") in kinds


def test_guard_options_are_checked():
    with pytest.raises(ConfigError, match="z_threshold"):
        Guard(z_threshold=0)
    assert math.isclose(Guard(z_threshold=4.0).config.z_threshold, 4.0)


def train_with_closure(model, opt, g, steps: int, poison: dict[int, str]):
    """``optimizer.step(closure)`` as LBFGS and Lightning call it; returns per step
    whether weights and state were kept and the first evaluation's gradient norm."""
    kept, norms = {}, {}
    for i in range(steps):
        for m in model.modules():
            if hasattr(m, "armed"):
                m.armed = poison.get(i) == type(m).__name__
        x, y = batch(i)
        evaluations = []

        def closure(x=x, y=y, evaluations=evaluations):  # this step's batch, bound now
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            evaluations.append(torch.nn.utils.get_total_norm(grads).item())
            return loss

        saved = snapshot(model, opt)
        opt.step(closure)
        kept[i], norms[i] = identical(model, opt, saved), evaluations[0]
    return kept, norms


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                                  lambda p: torch.optim.LBFGS(p, lr=0.1, max_iter=4)],
                         ids=["sgd", "lbfgs"])
def test_closure_steps_are_recorded_on_their_own_gradients_and_guarded(tmp_path, make):
    torch.manual_seed(0)
    model = net()
    opt = make(model.parameters())
    with guard(model, opt, store=tmp_path / "r.db", flush_every=4, sample_every=4) as g:
        kept, norms = train_with_closure(model, opt, g, 7, {5: "Log"})
    assert kept == {i: i == 5 for i in range(7)}
    assert g.skipped == 1 and all(torch.isfinite(p).all() for p in model.parameters())
    [finding] = [f for f in g.findings if f.kind == "nonfinite"]
    assert finding.module == "3" and finding.evidence["step"] == 5
    run = load(tmp_path / "r.db")
    good = [i for i in range(7) if i != 5]
    # the norm of the gradients the closure computed in that step, not the last step's
    np.testing.assert_allclose(run.steps["global_norm"][good], [norms[i] for i in good],
                               rtol=1e-6)
    assert np.isfinite(run.steps["loss"][good]).all()  # the closure's loss, logged for us
    assert no_hooks_left(model) and not opt._optimizer_step_pre_hooks
