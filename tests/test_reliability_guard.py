"""The guard covers what the optimizer will update at each step: layers unfrozen after the
guard was created, parameter groups added later, parameters the model does not own."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradhealth as gh
from gradhealth import load


def batch(n: int = 32, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, d), torch.randint(0, 2, (n,))


def finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def train(model, opt, guarded, steps, before_step=None, after_backward=None, loss_of=None):
    x, y = batch()
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        opt.zero_grad()
        out = model(x)
        loss = loss_of(out, y) if loss_of else nn.functional.cross_entropy(out[:, :2], y)
        loss.backward()
        if after_backward is not None:
            after_backward(step)
        opt.step()


@pytest.mark.parametrize("frozen_in_optimizer", [True, False])
def test_a_layer_unfrozen_after_the_guard_started_is_guarded(frozen_in_optimizer, tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    params = (model.parameters() if frozen_in_optimizer
              else [p for p in model.parameters() if p.requires_grad])
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def unfreeze(step):
        if step == 3:
            model[0].requires_grad_(True)
            if not frozen_in_optimizer:
                opt.add_param_group({"params": model[0].parameters()})

    def poison(step):
        if step == 5:
            model[0].weight.grad[0, 0] = math.nan

    with gh.guard(model, opt, store=tmp_path / "run.db", flush_every=4) as g:
        train(model, opt, g, 9, unfreeze, poison)
    assert g.skipped == 1
    assert finite(model)
    run = load(tmp_path / "run.db")
    assert [s.step for s in run.skipped] == [5]
    assert run.skipped[0].module == "0"  # the unfrozen layer is named
    # the unfrozen layer's gradient norms are recorded from the step it trains
    steps, names, values = run.layer_stat("weight_grad_norm")
    col = names.index("0")
    assert all(v > 0 for v, s in zip(values[:, col], steps) if s >= 3 and s != 5)


def test_a_parameter_group_added_later_is_guarded(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def grow(step):
        if step == 3:
            model.append(nn.Linear(4, 4))
            opt.add_param_group({"params": model[1].parameters()})

    def poison(step):
        if step == 5:
            model[1].weight.grad[0, 0] = math.nan

    with gh.guard(model, opt, store=tmp_path / "run.db", flush_every=4) as g:
        train(model, opt, g, 8, grow, poison)
    assert g.skipped == 1 and finite(model)
    assert all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v))
    run = load(tmp_path / "run.db")
    assert [(s.step, s.module) for s in run.skipped] == [(5, "1")]
    assert "1" in run.layer_stat("weight_grad_norm")[1]


def test_a_parameter_the_model_does_not_own_is_guarded():
    model = nn.Linear(4, 2)
    scale = nn.Parameter(torch.ones(()))  # a learned temperature held by the optimizer only
    opt = torch.optim.SGD([*model.parameters(), scale], lr=0.1)

    def poison(step):
        if step == 4:
            scale.grad.fill_(math.inf)

    with gh.guard(model, opt) as g:
        train(model, opt, g, 6, after_backward=poison,
              loss_of=lambda out, y: nn.functional.cross_entropy(out * scale, y))
    assert g.skipped == 1 and math.isfinite(scale.item()) and finite(model)


def test_quiet_steps_do_not_rebuild_the_layout():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gh.watch(model, opt) as w:
        first = w.layout
        train(model, opt, w, 5)
        assert w.layout is first  # frozen layers stay frozen: nothing to re-measure
        model[0].requires_grad_(True)
        train(model, opt, w, 1)
        assert w.layout is not first and "0" in w.layout.modules
