"""gh.probe: the numbers it measures, and that it leaves the model exactly as it was."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import no_hooks_left, same_state, state_copy
from gradhealth import probe, watch
from gradhealth.measure.stats import QUANTILES
from gradhealth.zoo.nets import conv_net, mlp


def bn_dropout_net():
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))


def batch(n=64, d=16, classes=3):
    return torch.randn(n, d), torch.randint(0, classes, (n,))


class TestLeavesModelUntouched:
    def test_parameters_and_buffers_bit_identical(self):
        model = bn_dropout_net()
        saved = state_copy(model)
        probe(model, *batch())
        assert same_state(model, saved)  # includes running_mean/var, num_batches_tracked

    def test_existing_grads_kept_and_absent_grads_stay_none(self):
        model = bn_dropout_net()
        x, y = batch()
        F.cross_entropy(model(x), y).backward()
        model[0].weight.grad = None
        grads = {n: (p.grad, None if p.grad is None else p.grad.clone())
                 for n, p in model.named_parameters()}
        probe(model, x, y)
        for n, p in model.named_parameters():
            obj, value = grads[n]
            assert p.grad is obj
            if value is not None:
                assert torch.equal(p.grad, value)

    def test_modes_restored_per_module(self):
        model = bn_dropout_net()
        model.eval()
        model[1].train()  # a deliberately mixed configuration
        before = [m.training for m in model.modules()]
        probe(model, *batch())
        assert [m.training for m in model.modules()] == before

    def test_rng_state_restored(self):
        model = bn_dropout_net()
        x, y = batch()
        state = torch.get_rng_state()
        probe(model, x, y)
        assert torch.equal(torch.get_rng_state(), state)

    def test_no_hook_left(self):
        model = bn_dropout_net()
        probe(model, *batch())
        assert no_hooks_left(model)

    def test_callers_input_not_made_differentiable(self):
        x, y = batch()
        probe(bn_dropout_net(), x, y)
        assert not x.requires_grad and x.grad is None


class TestMeasurements:
    def test_statistics_match_a_reference_computation(self):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
        x, y = batch()
        report = probe(model, x, y)
        # reference: retain grads of the intermediate outputs
        h = model[0](x)
        h.retain_grad()
        a = model[1](h)
        a.retain_grad()
        out = model[2](a)
        F.cross_entropy(out, y).backward()
        lin = report.layers["0"]
        assert lin.out_rms == pytest.approx(h.pow(2).mean().sqrt().item(), rel=1e-5)
        assert lin.out_mean == pytest.approx(h.mean().item(), rel=1e-4, abs=1e-7)
        assert lin.out_std == pytest.approx(h.std(unbiased=False).item(), rel=1e-4)
        assert lin.grad_rms == pytest.approx(h.grad.pow(2).mean().sqrt().item(), rel=1e-5)
        assert lin.grad_norm == pytest.approx(h.grad.norm().item(), rel=1e-5)
        ref_w = torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad.flatten()]).norm()
        assert lin.weight_grad_norm == pytest.approx(ref_w.item(), rel=1e-5)
        w = torch.cat([model[0].weight.flatten(), model[0].bias.flatten()]).norm()
        assert lin.weight_norm == pytest.approx(w.item(), rel=1e-6)
        assert lin.grad_to_weight == pytest.approx(ref_w.item() / w.item(), rel=1e-5)
        assert lin.weight_var_fan_in == pytest.approx(
            model[0].weight.var(unbiased=False).item() * 16, rel=1e-5)
        relu = report.layers["1"]
        assert relu.grad_rms == pytest.approx(a.grad.pow(2).mean().sqrt().item(), rel=1e-5)
        dead = ((a == 0).all(dim=0)).float().mean().item()
        assert relu.dead_fraction == pytest.approx(dead)
        assert report.meta["loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-6)
        assert relu.activation_after is None and lin.activation_after == "1"

    def test_saturation_fraction_counts_the_band(self):
        model = nn.Sequential(nn.Linear(16, 64), nn.Sigmoid(), nn.Linear(64, 3))
        with torch.no_grad():
            model[0].weight.mul_(20)
        x, y = batch()
        report = probe(model, x, y)
        s = torch.sigmoid(model[0](x))
        expected = ((s <= 0.02) | (s >= 0.98)).float().mean().item()
        assert report.layers["1"].saturation == pytest.approx(expected)

    def test_conv_dead_units_are_channels(self):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
        with torch.no_grad():
            model[0].bias[:6] = -100.0  # 6 of 8 channels dead everywhere
        report = probe(model, torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,)))
        assert report.layers["1"].dead_fraction == pytest.approx(6 / 8)

    def test_recurrent_gradient_per_time_step(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn, self.head = nn.RNN(4, 8, batch_first=True), nn.Linear(8, 1)

            def forward(self, x):
                return self.head(self.rnn(x)[0][:, -1])

        net = Net()
        x, y = torch.randn(5, 12, 4), torch.randn(5, 1)
        report = probe(net, x, y)
        series = report.layers["rnn"].time_grad_rms
        xr = x.clone().requires_grad_(True)
        F.mse_loss(net(xr), y).backward()
        ref = xr.grad.pow(2).mean(dim=(0, 2)).sqrt()
        assert series == pytest.approx(ref.tolist(), rel=1e-5)

    def test_records_every_called_module_by_qualified_name(self):
        model = bn_dropout_net()
        report = probe(model, *batch())
        assert set(report.layers) == {name for name, _ in model.named_modules()}
        assert [s.name for s in report.flow()] == ["0", "4", "6"]

    def test_report_is_strict_json(self):
        report = probe(bn_dropout_net(), *batch())
        json.dumps(report.to_dict(), allow_nan=False)


class TestInputsAndLosses:
    def test_tuple_and_dict_inputs(self):
        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

            def forward(self, x, z):
                return self.a(x) + self.b(z)

        x, z, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 3, (8,))
        assert probe(Two(), (x, z), y).layers["a"].grad_rms > 0
        assert probe(Two(), {"x": x, "z": z}, y).layers["b"].grad_rms > 0

    def test_float_targets_use_mse(self):
        model = nn.Linear(4, 2)
        x, y = torch.randn(8, 4), torch.randn(8, 2)
        report = probe(model, x, y)
        assert report.meta["loss"] == pytest.approx(F.mse_loss(model(x), y).item(), rel=1e-6)

    def test_custom_loss_with_and_without_targets(self):
        model = nn.Linear(4, 2)
        x = torch.randn(8, 4)
        r1 = probe(model, x, torch.ones(8, 2), loss_fn=lambda out, t: (out - t).abs().mean())
        r2 = probe(model, x, loss_fn=lambda out: out.pow(2).sum())
        assert r1.meta["loss"] == pytest.approx((model(x) - 1).abs().mean().item(), rel=1e-6)
        assert r2.meta["loss"] == pytest.approx(model(x).pow(2).sum().item(), rel=1e-5)

    def test_sequence_logits_with_token_targets(self):
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
        tokens = torch.randint(0, 10, (4, 7))
        report = probe(model, tokens, tokens)
        logits = model(tokens)
        ref = F.cross_entropy(logits.reshape(-1, 10), tokens.reshape(-1))
        assert report.meta["loss"] == pytest.approx(ref.item(), rel=1e-6)

    def test_model_returning_its_own_loss(self):
        class WithLoss(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 1)

            def forward(self, x):
                return {"loss": self.lin(x).pow(2).mean(), "logits": self.lin(x)}

        assert probe(WithLoss(), torch.randn(8, 4)).layers["lin"].weight_grad_norm > 0


class TestUnknownModules:
    def test_odd_outputs_and_foreign_modules_never_crash(self):
        class Weird(nn.Module):
            def forward(self, x):
                return {"a": x * 2, "n": 3, "idx": torch.argmax(x, dim=-1), "none": None}

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 4)
                self.weird = Weird()
                self.out = nn.Linear(4, 2)

            def forward(self, x):
                return self.out(self.weird(self.lin(x))["a"])

        report = probe(Net(), torch.randn(8, 4), torch.randint(0, 2, (8,)))
        assert report.layers["weird"].out_rms is not None

    def test_an_empty_output_gets_no_percentiles_and_breaks_nothing(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin, self.act, self.empty = nn.Linear(4, 4), nn.Tanh(), nn.Tanh()
                self.out = nn.Linear(4, 2)

            def forward(self, x):
                self.empty(x[:0])  # a branch with nothing in it this batch
                return self.out(self.act(self.lin(x)))

        model = Net()
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        report = probe(model, x, y)
        assert report.layers["empty"].out_quantiles is None
        act = torch.tanh(model.lin(x)).detach().flatten()
        got = report.layers["act"].out_quantiles
        assert got == pytest.approx(torch.quantile(act, torch.tensor(QUANTILES)).tolist(), rel=1e-6)
        with watch(model, sample_every=1) as w:  # the same on a watched, sampled step
            for _ in range(2):
                F.cross_entropy(model(x), y).backward()
                w.step()
            layers = w.report().layers
        assert layers["empty"].out_quantiles is None
        assert layers["act"].out_quantiles is not None

    def test_in_place_activation(self):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
        x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
        report = probe(model, x, y)
        h = model[0](x)
        h.retain_grad()
        F.cross_entropy(model[2](torch.relu(h)), y).backward()
        # the Linear's gradient is dL/d(its output), before the in-place ReLU
        want = h.grad.pow(2).mean().sqrt().item()
        assert report.layers["0"].grad_rms == pytest.approx(want, rel=1e-5)


class TestShallowNets:
    """Two hidden layers: vanishing is judged from the head along a plain chain."""

    @staticmethod
    def article_net(act=nn.Sigmoid, norm=False):
        """The lab's article net without BatchNorm: 784-300-100-10, PyTorch default init."""
        bn = (lambda n: [nn.BatchNorm1d(n)]) if norm else (lambda n: [])
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), *bn(300), act(),
                             nn.Linear(300, 100), *bn(100), act(), nn.Linear(100, 10))

    @staticmethod
    def first_over_head(report):
        flow = report.flow()
        return flow[0].grad_norm / flow[-1].grad_norm

    def test_sigmoid_default_init_vanishes(self):
        x, y = torch.rand(256, 28, 28), torch.randint(0, 10, (256,))  # pixels in [0, 1]
        report = probe(self.article_net(), x, y)
        [f] = report.findings
        assert f.kind == "vanishing" and f.module == "1" and f.evidence["output_end"] == "head"
        # each step ~ sqrt(n_in Var(W) E[sigmoid'^2]) <= sqrt(1/3 * 1/16)
        assert 0.12 < f.evidence["per_layer_factor"] < 0.15

    def test_relu_default_init_in_place_and_dropout_is_healthy(self):
        model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(inplace=True), nn.Dropout(0.2),
                              nn.Linear(300, 100), nn.ReLU(inplace=True), nn.Dropout(0.2),
                              nn.Linear(100, 10))
        report = probe(model, torch.rand(256, 784), torch.randint(0, 10, (256,)))
        assert report.layers["3"].inputs_from == ("2",)  # the chain is seen through both
        assert report.ok and not report.findings and self.first_over_head(report) > 0.1

    def test_batchnorm_net_on_raw_pixels_is_not_judged(self):
        # BatchNorm's backward gain 1/std makes dL/d(out) of the first layer ~1/255 of the
        # head's, with nothing wrong: the weight gradient does not depend on the input scale
        x, y = torch.rand(256, 28, 28) * 255, torch.randint(0, 10, (256,))
        report = probe(self.article_net(nn.ReLU, norm=True), x, y)
        assert self.first_over_head(report) < math.exp(-3)
        assert report.ok and not report.findings


class TestThreeHiddenLayers:
    """Three hidden layers: a plain chain is measured from the head against 0.01."""

    @staticmethod
    def net(act):
        """784-300-100-50-10, PyTorch default init."""
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), act(), nn.Linear(300, 100),
                             act(), nn.Linear(100, 50), act(), nn.Linear(50, 10))

    def test_sigmoid_default_init_vanishes(self):
        report = probe(self.net(nn.Sigmoid), torch.rand(256, 28, 28), torch.randint(0, 10, (256,)))
        [f] = report.findings
        assert f.kind == "vanishing" and f.module == "1" and f.evidence["output_end"] == "head"
        assert f.evidence["grad_ratio_input_to_output"] < 0.005  # thirds alone: ~0.02
        assert 0.12 < f.evidence["per_layer_factor"] < 0.15  # <= sqrt(1/3 * 1/16)

    @pytest.mark.parametrize("act", [nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh])
    def test_default_init_rectifier_like_and_tanh_are_healthy(self, act):
        report = probe(self.net(act), torch.rand(256, 28, 28), torch.randint(0, 10, (256,)))
        assert report.ok and not report.findings


class TestNormalisedNets:
    """Normalisation layers fed unnormalised inputs: the input's scale is not a symptom."""

    @staticmethod
    def he(w):
        nn.init.kaiming_normal_(w, nonlinearity="relu")

    @pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.LayerNorm], ids=["bn", "ln"])
    @pytest.mark.parametrize("depth", [3, 4, 5, 8, 20])
    @pytest.mark.parametrize("scale", [255.0, 1000.0, 1e-3])
    def test_mlp_on_scaled_inputs_is_healthy(self, norm, depth, scale):
        torch.manual_seed(0)
        model = mlp(depth, 64, nn.ReLU, self.he, n_in=64, norm=norm)
        report = probe(model, torch.randn(128, 64) * scale, torch.randint(0, 10, (128,)))
        assert report.ok and not report.findings, [f.message for f in report.findings]

    @pytest.mark.parametrize("scale", [255.0, 1e-3])
    @pytest.mark.parametrize("norm", [nn.BatchNorm2d, lambda c: nn.GroupNorm(4, c)],
                             ids=["bn", "gn"])
    def test_cnn_on_scaled_inputs_is_healthy(self, norm, scale):
        torch.manual_seed(0)
        x = torch.rand(32, 3, 16, 16) * scale
        report = probe(conv_net(4, norm), x, torch.randint(0, 10, (32,)))
        assert report.ok and not report.findings, [f.message for f in report.findings]

    def test_norm_after_an_in_place_activation(self):
        # Linear -> ReLU(inplace) -> BatchNorm, the order of the article's Keras model
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(inplace=True), nn.BatchNorm1d(64),
                              nn.Linear(64, 64), nn.ReLU(inplace=True), nn.BatchNorm1d(64),
                              nn.Linear(64, 64), nn.ReLU(inplace=True), nn.BatchNorm1d(64),
                              nn.Linear(64, 10))
        report = probe(model, torch.randn(128, 64) * 1000, torch.randint(0, 10, (128,)))
        assert report.layers["2"].inputs_from == ("0",)  # the ReLU wrote into 0's output
        assert report.layers["0"].grad_norm < 1e-2 * report.layers["6"].grad_norm
        assert report.ok and not report.findings

    def test_the_first_layers_weight_gradient_does_not_see_the_scale(self):
        # why the scale is no symptom: dL/dW = dL/dy x^T, 1/1000 * 1000
        torch.manual_seed(0)
        model = mlp(3, 64, nn.ReLU, self.he, n_in=64, norm=True)
        y = torch.randint(0, 10, (128,))
        x = torch.randn(128, 64)
        small, large = probe(model, x, y), probe(model, x * 1000, y)
        assert large.layers["0"].grad_norm < small.layers["0"].grad_norm / 100
        assert large.layers["0"].weight_grad_norm == pytest.approx(
            small.layers["0"].weight_grad_norm, rel=0.1)
        assert large.layers["1"].grad_norm == pytest.approx(small.layers["1"].grad_norm,
                                                            rel=0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models(dtype):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).to(dtype)
    x, y = batch()
    saved = state_copy(model)
    report = probe(model, x.to(dtype), y)
    assert report.meta["dtype"] == str(dtype).replace("torch.", "")
    assert report.layers["0"].grad_rms > 0 and report.ok
    assert same_state(model, saved) and no_hooks_left(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda(dtype):
    model = bn_dropout_net().cuda().to(dtype)
    x, y = batch()
    saved = state_copy(model)
    cuda_rng = torch.cuda.get_rng_state()
    report = probe(model, x.cuda().to(dtype), y.cuda())
    assert report.meta["device"].startswith("cuda")
    assert report.layers["0"].grad_rms > 0
    assert same_state(model, saved) and no_hooks_left(model)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
