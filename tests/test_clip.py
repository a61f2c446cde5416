"""Clippers against their definitions (docs/science.md#clipping) and torch's reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradhealth.clip import (
    AGC,
    AutoClip,
    ClipNorm,
    ClipNormPerParameter,
    ClipValue,
    ZClip,
    total_norm,
)
from gradhealth.errors import ConfigError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def model_with_grads(scale: float = 10.0) -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def set_norm(param: nn.Parameter, norm: float) -> None:
    param.grad = torch.full_like(param, norm / math.sqrt(param.numel()))


@pytest.fixture
def no_host_sync(monkeypatch):
    """Fail on .item() / float() / .cpu() / bool() of a tensor: the hot path must not sync."""
    def boom(*args, **kwargs):
        raise AssertionError("host sync in the per-step path")
    for name in ("item", "__float__", "cpu", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, boom)


def test_clip_value_bounds_and_direction():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([0.9, 100.0])
    clipper = ClipValue(1.0)
    result = clipper([p])
    assert torch.equal(p.grad, torch.tensor([0.9, 1.0]))  # direction changed
    assert bool(result.clipped) and clipper.steps == 1 and int(clipper.bind_count) == 1
    assert torch.isclose(result.pre_norm, torch.tensor([0.9, 100.0]).norm())
    p.grad = torch.tensor([0.5, -0.2])
    assert not bool(clipper([p]).clipped) and int(clipper.bind_count) == 1


def test_clip_norm_matches_torch_and_get_total_norm():
    model, ref = model_with_grads(), model_with_grads()
    ref.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), ref.parameters()):
        q.grad = p.grad.clone()
    expected_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.5)
    result = ClipNorm(1.5)(model)
    assert torch.allclose(result.pre_norm, expected_norm, rtol=1e-6)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)
    assert torch.isclose(total_norm(grads(model)), torch.tensor(1.5), rtol=1e-5)
    assert bool(result.clipped) and float(result.threshold) == 1.5


def test_clip_norm_below_threshold_untouched():
    model = model_with_grads(scale=1e-3)
    before = grads(model)
    result = ClipNorm(10.0)(model)
    assert not bool(result.clipped)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("clipper", [ClipValue(1.0), ClipNorm(1.0), ClipNormPerParameter(1.0),
                                     AGC(), AutoClip(), ZClip(warmup_steps=1)])
def test_nonfinite_gradients_left_untouched(clipper):
    model = model_with_grads()
    if isinstance(clipper, ZClip):
        clipper(model)  # finish warm-up on a finite step
    model[0].weight.grad[0, 0] = math.inf
    model[2].bias.grad[1] = math.nan
    before = grads(model)
    result = clipper(model)
    assert not bool(result.finite) and not bool(result.clipped)
    for a, p in zip(before, model.parameters()):
        assert torch.equal(a.nan_to_num(), p.grad.nan_to_num())
        assert torch.equal(a.isnan(), p.grad.isnan())  # no inf turned into nan


def test_per_parameter_differs_from_global():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    result = ClipNormPerParameter(4.0)([a, b])
    assert not bool(result.clipped) and float(a.grad) == 3.0
    assert math.isclose(float(b.grad), 4.0, rel_tol=1e-6)  # x max/(norm + 1e-6), as torch
    assert bool(ClipNorm(4.0)([a, b]).clipped)  # global norm 5 > 4
    assert torch.allclose(torch.cat([a.grad, b.grad]), torch.tensor([2.4, 3.2]), rtol=1e-5)
    a.grad, b.grad = torch.tensor([30.0]), torch.tensor([0.5])
    ClipNormPerParameter(4.0)([a, b])
    assert torch.allclose(a.grad, torch.tensor([4.0]), rtol=1e-5) and float(b.grad) == 0.5


def test_agc_unitwise_invariant_and_final_layer_excluded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 5, 3),
                          nn.Flatten(), nn.Linear(5 * 36, 7), nn.ReLU(), nn.Linear(7, 2))
    for name, p in model.named_parameters():
        unit = 1 if name.startswith("2.") and p.ndim > 1 else 0
        small = (torch.arange(p.shape[unit]) % 2 == 0).float() * 1e-6 + (
            torch.arange(p.shape[unit]) % 2 == 1).float()  # even units tiny, odd ones huge
        shape = [1] * p.ndim
        shape[unit] = -1
        p.grad = torch.randn_like(p) * small.view(shape)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    lam, eps = 0.01, 1e-3
    result = AGC(lam, eps)(model)
    assert bool(result.clipped)
    for name, p in model.named_parameters():
        if name.startswith("6."):
            assert torch.equal(p.grad, before[name])
            continue
        unit = 1 if name.startswith("2.") else 0
        dims = [d for d in range(p.ndim) if d != unit] if p.ndim > 1 else list(range(p.ndim))
        vn = torch.linalg.vector_norm
        w = vn(p.detach(), dim=dims).clamp(min=eps)
        g, g0 = vn(p.grad, dim=dims), vn(before[name], dim=dims)
        assert torch.all(g <= lam * w + 1e-6)
        same = g0 <= lam * w
        moved = torch.movedim(p.grad, unit, 0)[same] if p.ndim > 1 else p.grad
        moved0 = torch.movedim(before[name], unit, 0)[same] if p.ndim > 1 else before[name]
        if p.ndim > 1:
            assert torch.equal(moved, moved0) and 0 < int(same.sum()) < same.numel()
            assert not torch.equal(p.grad, before[name])


def test_autoclip_percentile_of_known_history():
    p = nn.Parameter(torch.zeros(4))
    norms = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 0.5, 7.0]
    clipper = AutoClip(percentile=25)
    for i, n in enumerate(norms):
        set_norm(p, n)
        result = clipper([p])
        expected = np.percentile(norms[: i + 1], 25)
        assert math.isclose(float(result.threshold), expected, rel_tol=1e-6)
        assert math.isclose(float(p.grad.norm()), min(n, expected), rel_tol=1e-5)
    windowed = AutoClip(percentile=50, history=3)
    for n in norms:
        set_norm(p, n)
        result = windowed([p])
    assert math.isclose(float(result.threshold), np.percentile(norms[-3:], 50), rel_tol=1e-6)


def test_autoclip_history_grows_past_initial_buffer():
    p = nn.Parameter(torch.zeros(1))
    clipper = AutoClip(percentile=100)
    for i in range(1100):
        p.grad = torch.tensor([float(i)])
        clipper([p])
    assert clipper._count == 1100 and float(clipper.last_result.threshold) == 1099.0


def test_zclip_warmup_spike_formula_and_ema_absorbs_clipped():
    p = nn.Parameter(torch.zeros(16))
    clipper = ZClip(alpha=0.97, z_thresh=2.5, warmup_steps=25)
    rng = np.random.default_rng(0)
    steady = list(1.0 + 0.05 * rng.standard_normal(40))
    for n in steady[:25]:
        set_norm(p, n)
        assert not bool(clipper([p]).clipped)
    mu = np.mean(steady[:25], dtype=np.float64)
    var = np.mean((np.array(steady[:25]) - mu) ** 2)
    for n in steady[25:]:
        set_norm(p, n)
        assert not bool(clipper([p]).clipped)
        mu = 0.97 * mu + 0.03 * n
        var = 0.97 * var + 0.03 * (n - mu) ** 2
    assert math.isclose(float(clipper.mean), mu, rel_tol=1e-5)
    spike = 100 * steady[-1]
    set_norm(p, spike)
    result = clipper([p])
    std = math.sqrt(var)
    z = (spike - mu) / (std + 1e-6)
    target = mu + 2.5**2 * std / z
    assert bool(result.clipped)
    assert math.isclose(float(p.grad.norm()), target, rel_tol=1e-4)
    new_mu = 0.97 * mu + 0.03 * target  # the clipped value, not the raw spike
    assert math.isclose(float(clipper.mean), new_mu, rel_tol=1e-5)
    assert float(clipper.mean) < 1.1 and int(clipper.bind_count) == 1 and clipper.steps == 41


def test_no_host_sync_in_per_step_path(no_host_sync):
    model = model_with_grads()
    clippers = [ClipValue(), ClipNorm(1.0), ClipNormPerParameter(1.0), AGC(), AutoClip(),
                ZClip(warmup_steps=2)]
    for clipper in clippers:
        for _ in range(3):
            clipper(model)
        assert clipper.steps == 3 and clipper.last_pre_norm is not None


def test_half_precision_norm_does_not_overflow():
    g = torch.full((300,), 4000.0, dtype=torch.float16)
    assert torch.isfinite(total_norm([g]))
    assert math.isclose(float(total_norm([g])), 4000 * math.sqrt(300), rel_tol=1e-3)


def test_amp_unscale_then_clip_equals_fp32():
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    model, ref = model_with_grads(), model_with_grads()
    ref.load_state_dict(model.state_dict())
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
    nn.functional.mse_loss(ref(x), y).backward()
    ClipNorm(0.1)(ref)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    ClipNorm(0.1)(model, optimizer=opt, scaler=scaler)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)
    # already unscaled: the helper must not unscale (or raise) a second time
    ClipNorm(0.1)(model, optimizer=opt, scaler=scaler)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)
    scaler.step(opt)
    scaler.update()
    with pytest.raises(ConfigError):
        ClipNorm(1.0)(model, scaler=scaler)


def test_config_errors():
    for make in (lambda: ClipValue(0), lambda: ClipNorm(-1), lambda: AutoClip(150),
                 lambda: ZClip(alpha=1.5), lambda: AGC(clipping=0)):
        with pytest.raises(ConfigError):
            make()


@pytest.mark.parametrize("clipper", [ClipValue(1.0), ClipNorm(1.0), AutoClip(), ZClip(),
                                     AGC()], ids=lambda c: type(c).__name__)
def test_called_with_something_other_than_parameters_is_a_clear_error(clipper):
    for bad in (42, [1.0, 2.0], "model"):
        with pytest.raises(ConfigError, match="clip\\(model\\)"):
            clipper(bad)
    assert clipper.steps == 0


def test_zclip_warmup_ending_on_a_step_without_gradients_still_clips_spikes():
    # the warm-up's last step had no gradient: the EMA starts at the next step that has one
    model = nn.Linear(4, 4)
    clipper = ZClip(warmup_steps=1)
    clipper(model)  # no .grad anywhere yet
    for scale in (1.0, 1.0, 1.0, 1000.0):
        model.weight.grad = torch.full_like(model.weight, scale)
        model.bias.grad = torch.full_like(model.bias, scale)
        result = clipper(model)
    assert bool(result.clipped) and float(result.pre_norm) == pytest.approx(1000 * 20 ** 0.5)
    after = torch.linalg.vector_norm(torch.cat([model.weight.grad.flatten(),
                                                model.bias.grad.flatten()]))
    assert float(after) < 10.0  # clipped to near the running level (~4.5), not left at 4472
