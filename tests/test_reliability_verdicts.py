"""Issue 16: right verdicts on non-finite values, and the probe's promise kept.

Each test is one item of the issue: a NaN in the batch is the batch's (5), a NaN made by
the root module's own forward names the root and the operation (6), errors that teach
(11), the probe leaves old graphs usable and weights untouched (13, 14), one naming for
compiled models (15). Item 7 (DDP) is in tests/test_distributed.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import no_hooks_left
from gradhealth import guard, load, probe, watch
from gradhealth.errors import ForwardError, InputMismatchError, UnsupportedModelError


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def batch(i: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def nonfinite(findings) -> list:
    return [f for f in findings if f.kind == "nonfinite"]


def train(model, opt, w, steps: int, before=None) -> None:
    for i in range(steps):
        x, y = batch(i)
        if before is not None:
            before(i, x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# -- item 5: a non-finite batch is the batch's, not a module's -------------------------
def test_probe_says_the_input_batch_is_nonfinite():
    x, y = batch()
    x[3, 5], x[7, 0] = math.nan, math.inf
    [f] = nonfinite(probe(mlp(), x, y).findings)
    assert f.evidence["pass"] == "input" and f.module == "" and f.severity == "critical"
    [arg] = f.evidence["arguments"]
    assert arg["argument"] == "inputs" and arg["nan"] == 1 and arg["inf"] == 1
    assert arg["first"] == [[3, 5], [7, 0]]
    assert "input batch" in f.message and "inputs[3, 5]" in f.message
    assert "every module output is finite" not in f.message


def test_probe_names_the_argument_of_a_dict_batch_and_nonfinite_targets():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 3), nn.Linear(4, 3)

        def forward(self, x, extra):
            return self.a(x) + self.b(extra)

    x, _ = batch()
    extra = torch.randn(32, 4)
    extra[0, 2] = math.nan
    [f] = nonfinite(probe(TwoInputs(), {"x": x, "extra": extra}, torch.randn(32, 3)).findings)
    [arg] = f.evidence["arguments"]
    assert f.evidence["pass"] == "input" and arg["argument"] == "inputs['extra']"
    assert arg["first"] == [[0, 2]] and arg["nan"] == 1
    targets = torch.randn(32, 3)
    targets[5, 1] = math.inf
    [f] = nonfinite(probe(mlp(), x, targets).findings)  # MSE on float targets
    assert f.evidence["pass"] == "targets" and "targets[5, 1]" in f.message


def test_guard_and_watch_blame_the_batch_not_a_module(tmp_path):
    def poison(i, x):
        if i == 3:
            x[0, 0] = math.nan

    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    with guard(model, opt, store=tmp_path / "g.db", sample_every=None) as g:
        train(model, opt, g, 5, poison)
    [f] = nonfinite(g.findings)
    assert f.evidence["pass"] == "input" and f.evidence["step"] == 3 and f.module == ""
    assert f.evidence["arguments"][0]["first"] == [[0, 0]]
    assert [(s.step, s.module) for s in load(tmp_path / "g.db").skipped] == [(3, None)]
    # the watch's sampled step sees the same batch: no module is blamed for it
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, sample_every=1, flush_every=2) as w:
        train(model, opt, w, 4, poison)
    blamed = [f for f in nonfinite(w.findings) if f.evidence.get("pass") == "forward"]
    assert not blamed, [f.message for f in blamed]
    assert any(f.evidence.get("pass") == "input" for f in w.findings)


def test_guard_points_at_the_loss_for_nonfinite_mse_targets():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with guard(model, opt, sample_every=None) as g:
        for i in range(3):
            x, _ = batch(i)
            y = torch.randn(32, 3)
            y[4, 1] = math.nan if i == 1 else y[4, 1]
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    [f] = nonfinite(g.findings)
    assert f.evidence["step"] == 1 and f.module == "" and g.skipped == 1
    assert "targets" in f.message and "loss" in f.message


# -- item 6: the root module's own forward ------------------------------------------------
class RootLog(nn.Module):
    armed = True

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.a(x)
        if self.armed:
            h = torch.log(h - 1e3)  # ROOT-OP: NaN made outside any submodule
        return self.b(h)


def root_op_line() -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if "# ROOT-OP" in line
                    and "torch.log" in line)


def test_probe_names_the_root_module_and_its_operation():
    [f] = nonfinite(probe(RootLog(), *batch()).findings)
    assert f.module == "" and f.evidence["pass"] == "forward"
    assert f.evidence["operation"] == "torch.log"
    assert f.evidence["file"].endswith("test_reliability_verdicts.py")
    assert f.evidence["line"] == root_op_line()
    assert "RootLog" in f.message and "torch.log" in f.message and "``" not in f.message


def test_probe_names_the_operation_inside_a_module():
    class Log(nn.Module):
        def forward(self, x):
            return x.clamp(max=0).sqrt() + 1

    model = nn.Sequential(nn.Linear(8, 16), Log(), nn.Linear(16, 3))
    [f] = nonfinite(probe(model, *batch()).findings)
    assert f.module == "1" and f.evidence["operation"] == "torch.Tensor.sqrt"


def test_guard_replay_names_the_root_operation():
    torch.manual_seed(0)
    model = RootLog()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def arm(i, x):
        model.armed = i == 2

    with guard(model, opt, sample_every=None) as g:
        train(model, opt, g, 4, arm)
    [f] = nonfinite(g.findings)
    assert f.module == "" and f.evidence["pass"] == "forward" and f.evidence["step"] == 2
    assert f.evidence["operation"] == "torch.log" and f.evidence["line"] == root_op_line()
    assert "did not reproduce" not in f.message and g.skipped == 1


# -- item 11: errors that teach ---------------------------------------------------------------
@pytest.mark.parametrize("inputs_on", ["cpu", "meta"])
def test_probe_on_a_meta_model_is_a_clear_error(inputs_on):
    model = mlp().to("meta")
    x, y = batch()
    with pytest.raises(UnsupportedModelError, match="meta") as info:
        probe(model, x.to(inputs_on), y.to(inputs_on))
    assert "to_empty" in str(info.value) and "0.weight" in str(info.value)
    assert no_hooks_left(model)


def test_watch_on_an_uninitialised_lazy_module_is_a_clear_error(tmp_path):
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    for store in (tmp_path / "r.db", None):
        with pytest.raises(UnsupportedModelError, match="LazyLinear") as info:
            watch(model, store=store)
        assert "'0'" in str(info.value) and "forward" in str(info.value)
        assert not model._forward_hooks and not model._forward_pre_hooks
    assert not (tmp_path / "r.db").exists()


def test_an_error_in_the_users_forward_stays_visible():
    class Buggy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(8, 8), Lookup())

        def forward(self, x):
            return self.inner(x)

    class Lookup(nn.Module):
        table: dict = {}

        def forward(self, x):
            return x * self.table["scale"]

    with pytest.raises(ForwardError) as info:
        probe(Buggy(), *batch())
    err = info.value
    assert not isinstance(err, InputMismatchError)
    assert isinstance(err.__cause__, KeyError) and err.module == "inner.1"
    assert "KeyError" in str(err) and "'scale'" in str(err) and "'inner.1'" in str(err)
    assert "shape" not in str(err).split(":")[0]  # not read as an input mismatch
    with pytest.raises(InputMismatchError, match="rejected"):  # a real one still is
        probe(mlp(), torch.randn(4, 7), torch.randint(0, 3, (4,)))


# -- items 13 and 14: the probe's promise ---------------------------------------------------
def test_a_graph_built_before_the_probe_can_still_be_backpropagated():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model.eval()
    x, y = batch()
    loss = nn.functional.cross_entropy(model(x), y)
    buffers = {k: (b, b.clone(), b._version) for k, b in model.named_buffers()}
    probe(model, x, y)
    loss.backward()  # the eval graph saved running_mean/var: not bumped by the probe
    for key, buf in model.named_buffers():
        original, value, version = buffers[key]
        assert buf is original and torch.equal(buf, value) and buf._version == version


def test_a_fix_forward_leaves_an_old_graph_usable_too():
    from gradhealth.fixes.forward import preserved_state

    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)).eval()
    x, _ = batch()
    loss = model(x).sum()
    with preserved_state(model):
        model.train()(x)  # a remedy's example forward, in training mode
    loss.backward()
    assert not model.training


class ClampsItself(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(8, 3)
        self.emb = nn.Embedding(10, 8, max_norm=0.5)  # renormalises its rows in forward

    def forward(self, x):
        w = self.fc.weight
        if self.how == "no_grad":
            with torch.no_grad():
                w.clamp_(-0.01, 0.01)
        elif self.how == "data":
            w.data.clamp_(-0.01, 0.01)
        elif self.how == "assign":
            w.data = w.data.clamp(-0.01, 0.01)
        else:
            with torch.no_grad():
                w[0] = 0.0
                w += 1.0
        ids = torch.arange(x.shape[0]) % 10
        return self.fc(x + self.emb(ids))


@pytest.mark.parametrize("how", ["no_grad", "data", "assign", "operators"])
def test_weights_edited_by_the_forward_are_restored(how):
    model = ClampsItself(how)
    with torch.no_grad():
        model.emb.weight.mul_(10)
    x, y = batch()
    model.eval()
    old_graph = nn.functional.cross_entropy(model.fc(x), y)  # saved fc.weight for backward
    before = {k: (p, p.detach().clone(), p._version, p.data_ptr())
              for k, p in model.named_parameters()}
    probe(model, x, y)
    for key, p in model.named_parameters():
        original, value, version, pointer = before[key]
        assert p is original and torch.equal(p, value), key
        assert p._version == version and p.data_ptr() == pointer, key
    old_graph.backward()


def test_an_uninitialised_lazy_module_is_refused_before_running():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3))
    rng = torch.get_rng_state()
    hooks = [dict(m._forward_pre_hooks) for m in model.modules()]  # LazyLinear's own
    with pytest.raises(UnsupportedModelError, match="LazyLinear") as info:
        probe(model, *batch())
    assert "'0'" in str(info.value) and "model(" in str(info.value)
    assert isinstance(model[0], nn.LazyLinear)  # not materialised
    assert torch.equal(torch.get_rng_state(), rng)
    assert [dict(m._forward_pre_hooks) for m in model.modules()] == hooks


# -- item 15: one naming -------------------------------------------------------------------
def test_a_compiled_model_is_probed_under_the_names_of_the_users_model():
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    plain, viewed = probe(model, *batch()), probe(compiled, *batch())
    assert list(viewed.layers) == list(plain.layers) == ["", "0", "1", "2"]
    assert viewed.layers["0"].grad_rms == pytest.approx(plain.layers["0"].grad_rms)
    assert viewed.meta["model"] == "Sequential" and no_hooks_left(model)
