"""gh.watch: recorded numbers against references, the store, sampling, hooks, compile, SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradhealth
from conftest import no_hooks_left
from gradhealth import Report, load, watch, zoo
from gradhealth.clip import ClipNorm
from gradhealth.errors import ConfigError, StoreError


class Net(nn.Module):
    """An MLP with a frozen layer and a parameter that never gets a gradient."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
        self.frozen = nn.Linear(16, 16)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(16, 3)
        self.unused = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.head(self.frozen(self.body(x)))


class SelfLoss(nn.Module):
    """A model returning its own loss, Hugging Face style (``{"loss": ...}``)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x, y):
        return {"loss": nn.functional.cross_entropy(self.fc(x), y)}


def batch(i: int, n: int = 32):
    g = torch.Generator().manual_seed(i)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, w, i: int) -> None:
    """One step on ``batch(i)``, its loss logged with ``w``."""
    x, y = batch(i)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    w.log_loss(loss)
    opt.step()


def module_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    out: dict[str, list[nn.Parameter]] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            out[name] = own
    return out


def no_optimizer_hooks(opt: torch.optim.Optimizer) -> bool:
    return not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_recorded_numbers_equal_references_and_the_store_holds_every_step(tmp_path):
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    path = tmp_path / "run.db"
    totals, per_module, losses, ratios = [], [], [], {}
    with watch(model, opt, store=path, flush_every=4, sample_every=5) as w:
        for i in range(11):
            x, y = batch(i)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            totals.append(torch.nn.utils.get_total_norm(grads).item())
            per_module.append({m: torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) if p.grad is not None else torch.zeros(())
                 for p in ps])).item() for m, ps in module_params(model).items()})
            losses.append(loss.item())
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
            if i % 5 == 0:
                delta = torch.cat([(p.detach() - b).flatten()
                                   for p, b in zip(model.parameters(), before) if p.requires_grad])
                weight = torch.cat([p.detach().flatten() for p in model.parameters()
                                    if p.requires_grad])
                ratios[i] = (delta.norm() / weight.norm()).item()
    run = load(path)
    steps = run.steps
    np.testing.assert_array_equal(steps["step"], np.arange(11))
    np.testing.assert_allclose(steps["global_norm"], totals, rtol=1e-6)
    np.testing.assert_allclose(steps["loss"], losses, rtol=1e-7)
    assert not steps["nonfinite"].any() and not steps["skipped"].any()
    assert np.isnan(steps["update_ratio"][[1, 2, 3, 4, 6]]).all()
    np.testing.assert_allclose(steps["update_ratio"][[0, 5, 10]], [ratios[i] for i in (0, 5, 10)],
                               rtol=1e-5)
    got_steps, names, values = run.layer_stat("weight_grad_norm")
    np.testing.assert_array_equal(got_steps, np.arange(11))
    assert names == ["", "body.0", "body.2", "head"]  # "" owns `unused`; `frozen` has none
    for j, name in enumerate(names):
        np.testing.assert_allclose(values[:, j], [r[name] for r in per_module], rtol=1e-6)
    assert run.meta["modules"] == names and run.meta["kind"] == "watch"
    assert run.meta["summary"]["steps"] == 11 and "torch" in run.meta["environment"]
    sampled, layer_names, out_rms = run.layer_stat("out_rms")
    np.testing.assert_array_equal(sampled, [0, 5, 10])
    assert {"body.0", "body.1", "frozen", "head"} <= set(layer_names)
    _, q_names, q50 = run.layer_stat("out_q50")  # activation percentiles, for the HTML report
    q = dict(zip(q_names, q50[-1]))
    assert q["body.1"] >= 0 and -1 < q["body.3"] < 1 and np.isnan(q["body.0"])
    assert no_hooks_left(model) and no_optimizer_hooks(opt)


def test_module_hooks_only_on_sampled_steps():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    armed = []

    def count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model[0:])

    root = []  # the root's own forward hooks before each step's forward
    with watch(model, opt, sample_every=3) as w:
        for i in range(7):
            x, y = batch(i)
            opt.zero_grad()
            before = count()
            root.append((len(model._forward_pre_hooks), len(model._forward_hooks)))
            out = model(x)
            armed.append((before, count()))
            nn.functional.cross_entropy(out, y).backward()
            opt.step()
            assert count() == 0
    assert [a for a, _ in armed] == [0] * 7
    assert [b > 0 for _, b in armed] == [i % 3 == 0 for i in range(7)]
    # the root's hooks only for sampled steps (and the first: does the output carry a loss?)
    assert root == [(1, 1) if i % 3 == 0 else (0, 0) for i in range(7)]
    assert w.summary()["samples"] == 3
    assert no_hooks_left(model)


def test_root_hooks_stay_for_outputs_with_a_loss_the_guard_and_loops_without_optimizer():
    """A model returning its loss (``output.loss``) keeps the root's post-hook on every
    step (its loss is recorded every step); the guard keeps the pre-hook (its replay needs
    the batch), and so does a loop without an optimizer object."""

    model = SelfLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, sample_every=50, store=None) as w:
        for i in range(5):
            opt.zero_grad()
            model(*batch(i))["loss"].backward()
            opt.step()
            assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == (0, 1)
    assert w.journal.counts["steps"] == 5 and w.journal.last["loss"] is not None
    plain = nn.Linear(8, 3)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    with gradhealth.guard(plain, opt, sample_every=50) as g:
        for i in range(3):
            x, y = batch(i)
            opt.zero_grad()
            nn.functional.cross_entropy(plain(x), y).backward()
            opt.step()
            assert (len(plain._forward_pre_hooks), len(plain._forward_hooks)) == (1, 0)
    assert g.steps == 3 and no_hooks_left(plain)
    with watch(plain, sample_every=50) as w:
        for i in range(3):
            x, y = batch(i)
            nn.functional.cross_entropy(plain(x), y).backward()
            w.step()
            assert (len(plain._forward_pre_hooks), len(plain._forward_hooks)) == (1, 0)
    assert no_hooks_left(plain)


CPU_BRANCHES = {("gradhealth.measure.stats", "quantile_rows"),
                ("gradhealth.training.recorder", "cpu_floats")}


def _cpu_branch(frame) -> bool:
    """A read made by code that runs for CPU tensors only (no device to wait for):
    ``stats.quantile_rows`` sorts a CPU sample with numpy, ``recorder.cpu_floats`` reads
    a CPU step's gradient norms and loss as floats."""
    while frame is not None:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) in CPU_BRANCHES:
            return True
        frame = frame.f_back
    return False


class HostReads(TorchDispatchMode):
    """Record every read of a tensor's value by the host: ``.item()``/``float()``/``bool()``
    at the ATen level, ``.tolist()``/``.numpy()``/``.cpu()`` at the Python level (on a GPU
    each of them waits for the device)."""

    METHODS = ("tolist", "numpy", "cpu", "item", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def recorded(*args, _name=name, _original=original, **kwargs):
                if not _cpu_branch(sys._getframe(1)):
                    self.reads.append(_name)
                return _original(*args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, recorded)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
                    torch.ops.aten.is_nonzero.default) and not _cpu_branch(sys._getframe(1)):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_sampled_steps_queue_their_numbers_and_never_wait_for_them(tmp_path, monkeypatch):
    """A device that has not caught up (``Fetch.ready`` says no): sampled steps go on
    without reading a value, and the numbers are judged and stored once they land."""
    from gradhealth.measure.fetch import Fetch

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [batch(i) for i in range(12)]
    outputs: list[torch.Tensor] = []  # body.0's output at every step, for reference
    handle = model.body[0].register_forward_hook(lambda m, a, out: outputs.append(out.detach()))
    with watch(model, opt, store=tmp_path / "r.db", flush_every=100, sample_every=5) as w:
        monkeypatch.setattr(Fetch, "ready", lambda self: False)
        reads = HostReads(monkeypatch)
        for x, y in batches:
            opt.zero_grad()
            with reads:
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                w.log_loss(loss)
                opt.step()
        assert reads.reads == []
        monkeypatch.undo()
        assert w.summary()["samples"] == 3  # steps 0, 5, 10: queued, none judged yet
        assert not [f for f in w.journal.findings if f.kind != "spike"]
        assert isinstance(w.findings, list)  # waits for (and judges) the queued samples
    handle.remove()
    run = load(tmp_path / "r.db")
    steps, names, values = run.layer_stat("out_rms")
    np.testing.assert_array_equal(steps, [0, 5, 10])
    want = [outputs[i].pow(2).mean().sqrt().item() for i in (0, 5, 10)]
    np.testing.assert_allclose(values[:, names.index("body.0")], want, rtol=1e-5)
    assert no_hooks_left(model) and no_optimizer_hooks(opt)


def test_hooks_removed_when_the_block_raises(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="boom"):
        with watch(model, opt, store=tmp_path / "r.db", scaler=scaler, sample_every=1):
            model(torch.randn(2, 8)).sum().backward()
            opt.step()
            model(torch.randn(2, 8))  # a sampled forward: Taps armed when the error comes
            raise RuntimeError("boom")
    assert no_hooks_left(model) and no_optimizer_hooks(opt)
    assert "update" not in vars(scaler)
    assert len(load(tmp_path / "r.db").steps) == 1  # flushed on the way out


def test_loop_without_an_optimizer_object_and_a_model_that_returns_its_loss(tmp_path):
    model = SelfLoss()
    losses = []
    with watch(model, store=tmp_path / "r.db", sample_every=2) as w:
        for i in range(5):
            out = model(*batch(i))
            out["loss"].backward()
            losses.append(out["loss"].item())
            assert w.step() is True
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
    run = load(tmp_path / "r.db")
    np.testing.assert_allclose(run.steps["loss"], losses, rtol=1e-7)
    assert np.isfinite(run.steps["update_ratio"][[0, 2]]).all()  # measured at the next forward
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt) as w, pytest.raises(ConfigError, match="optimizer"):
        w.step()


def test_findings_live_and_in_the_report():
    model, x, y = zoo.case("sigmoid-small-10").build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, opt, sample_every=2, window=2) as w:
        for i in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if i == 0:
                assert [f.kind for f in w.findings] == ["vanishing"]  # after the first sample
    report = w.report()
    assert isinstance(report, Report) and not report.ok
    assert report.by_kind("vanishing") and report.meta["steps"] == 4
    assert len(w.findings) == 1  # the same finding is not repeated at every sample
    assert "vanishing" in str(report)

    healthy, x, y = zoo.case("tanh-glorot-10").build()
    opt = torch.optim.SGD(healthy.parameters(), lr=1e-3)
    with watch(healthy, opt, sample_every=1) as w:
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(healthy(x), y).backward()
            opt.step()
    assert w.report().ok


def test_clipper_runs_before_the_step_and_is_recorded(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    moved = []
    with watch(model, opt, store=tmp_path / "r.db", clip=ClipNorm(1e-3)):
        for i in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(batch(i)[0]), batch(i)[1]).backward()
            before = torch.cat([p.detach().flatten() for p in model.parameters()])
            opt.step()
            moved.append((torch.cat([p.detach().flatten() for p in model.parameters()])
                          - before).norm().item())
    run = load(tmp_path / "r.db")
    assert run.meta["config"]["clip"] == "ClipNorm(max_norm=0.001, norm_type=2.0)"
    steps = run.steps
    np.testing.assert_allclose(steps["clip_pre_norm"], steps["global_norm"], rtol=1e-6)
    assert (steps["global_norm"] > 1e-2).all()  # recorded before clipping
    np.testing.assert_array_equal(steps["clipped"], [1, 1, 1])
    np.testing.assert_allclose(moved, 0.1 * 1e-3, rtol=1e-3)  # SGD stepped with clipped grads


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")  # torch's own
@pytest.mark.parametrize("unused", [False, True])  # True: the general (unfused) norm path
@pytest.mark.parametrize("host", [True, False])
def test_gradients_that_require_grad_are_measured_without_a_warning(tmp_path, monkeypatch,
                                                                  host, unused):
    """``backward(create_graph=True)`` (a gradient penalty, a second-order method) leaves
    gradients that require grad themselves: their norms are read as floats (a CPU's host
    path) or stacked into the window (``out=``, which refuses inputs that require grad)
    without a warning or an error, and equal torch's."""
    from gradhealth.training import recorder

    if not host:
        monkeypatch.setattr(recorder, "DEFER_PARAMS", 0)  # the buffer path, as on a GPU
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    if unused:
        model.register_parameter("unused", nn.Parameter(torch.ones(2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    totals = []
    with watch(model, opt, store=tmp_path / "r.db", sample_every=3, flush_every=4) as w:
        assert w.recorder._host is host
        for i in range(6):
            x, y = batch(i)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=True)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert len(grads) == 4 and all(g.requires_grad for g in grads)
            totals.append(torch.nn.utils.get_total_norm([g.detach() for g in grads]).item())
            w.log_loss(loss)
            opt.step()
    run = load(tmp_path / "r.db")
    np.testing.assert_allclose(run.steps["global_norm"], totals, rtol=1e-6)
    assert run.steps["step"].tolist() == list(range(6))


@pytest.mark.slow
def test_compiled_model(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    totals = []
    with watch(compiled, opt, store=tmp_path / "r.db", sample_every=2, flush_every=3):
        for i in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(compiled(batch(i)[0]), batch(i)[1]).backward()
            totals.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
            opt.step()
    run = load(tmp_path / "r.db")
    np.testing.assert_allclose(run.steps["global_norm"], torch.stack(totals).numpy(), rtol=1e-6)
    sampled, names, values = run.layer_stat("grad_rms")  # dL/d(output): the eager sampled step
    np.testing.assert_array_equal(sampled, [0, 2, 4])
    assert set(names) == {"0", "1", "2"} and np.isfinite(values).all()
    assert run.meta["compiled"] is True and run.meta["modules"] == ["0", "2"]
    assert no_hooks_left(model) and no_hooks_left(compiled) and no_optimizer_hooks(opt)


@pytest.fixture
def one_rank_group(tmp_path):
    """A real gloo process group of one rank (what torchrun gives each process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("order", ["ddp(compile)", "compile(ddp)"])
def test_compiled_model_under_ddp(tmp_path, one_rank_group, order):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    ddp = nn.parallel.DistributedDataParallel
    wrapped = (ddp(torch.compile(model, backend="aot_eager")) if order == "ddp(compile)"
               else torch.compile(ddp(model), backend="aot_eager"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(wrapped, opt, store=tmp_path / "r.db", sample_every=2) as w:
        for i in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(wrapped(batch(i)[0]), batch(i)[1]).backward()
            opt.step()
        assert w.target is model
    run = load(tmp_path / "r.db")
    assert run.meta["compiled"] is True and run.meta["modules"] == ["0", "2"]
    sampled, names, values = run.layer_stat("grad_rms")  # hooks fired: the eager sampled step
    np.testing.assert_array_equal(sampled, [0, 2])
    assert set(names) == {"0", "1", "2"} and np.isfinite(values).all()
    assert no_hooks_left(model) and no_optimizer_hooks(opt)


def test_refusals(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="flush_every"):
        watch(model, flush_every=0)
    with pytest.raises(ConfigError, match="nn.Module"):
        watch(object())
    (tmp_path / "r.db").write_bytes(b"")
    with pytest.raises(StoreError, match="overwrite=True"):
        watch(model, store=tmp_path / "r.db")
    with pytest.raises(StoreError, match="is a folder") as err:
        watch(model, store=tmp_path)
    assert "overwrite" not in str(err.value)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="holds none of the model's 2 trainable"):
        watch(model, other, store=tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()
    part = torch.optim.SGD([model[0].weight], lr=0.1)  # some of them: a legitimate split
    watch(model, part).close()
    closed = watch(model)
    closed.close()
    for call in (closed.step, lambda: closed.log_loss(torch.tensor(1.0))):
        with pytest.raises(ConfigError, match="closed watch"):
            call()
    assert closed.report().meta["steps"] == 0  # reading what it holds stays fine
    assert no_hooks_left(model) and no_optimizer_hooks(other)


CHILD = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from gradhealth import watch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with watch(model, opt, store=sys.argv[1], flush_every=5, sample_every=5) as w:
        while True:  # until the parent kills it
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            opt.step()
""")


def test_store_is_readable_while_written_and_survives_sigkill(tmp_path):
    path = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(gradhealth.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    live = 0
    with subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stderr=subprocess.PIPE,
                          text=True, env=env) as proc:
        deadline = time.monotonic() + 60
        while live < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                steps = load(path).steps["step"]  # read while the child writes
            except StoreError:
                continue  # not created yet
            assert len(steps) % 5 == 0
            np.testing.assert_array_equal(steps, np.arange(len(steps)))
            live = len(steps)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert live >= 40, stderr
    run = load(path)
    n = len(run.steps)
    assert n >= live and n % 5 == 0
    np.testing.assert_array_equal(run.steps["step"], np.arange(n))
    assert np.isfinite(run.steps["loss"]).all()
    got, _, _ = run.layer_stat("weight_grad_norm")
    np.testing.assert_array_equal(got, np.arange(n))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.mark.parametrize("c", [c for c in zoo.CASES if "code-bug" not in c.tags],
                         ids=lambda c: c.name)
def test_sampled_statistics_equal_the_probes_on_every_zoo_network(c):
    """The watch's lean sampled statistics (sum/norm pairs, batched quantile and fan_in*Var
    reductions) against the probe's full ones, same weights and batch (lr 0)."""
    from gradhealth import probe
    from gradhealth.measure.loss import compute_loss

    model, x, y = c.build()
    full = probe(model, x, y).layers
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with watch(model, opt, sample_every=1, flush_every=1) as w:
        opt.zero_grad()
        compute_loss(model(x), y, None).backward()
        opt.step()
        lean = w.report().layers
    compared = 0
    for name, s in full.items():
        for field in ("out_rms", "out_std", "grad_rms", "grad_norm", "weight_var_fan_in"):
            a, b = getattr(s, field), getattr(lean[name], field) if name in lean else None
            if a is None or b is None:
                continue
            if field == "out_std":  # var = E[x^2] - mean^2 from float32 sums in both: as
                # exact as E[x^2], not relative to itself (sigmoid outputs: std << mean)
                assert b * b == pytest.approx(a * a, rel=1e-4, abs=2e-5 * s.out_rms ** 2), name
            else:
                assert b == pytest.approx(a, rel=1e-4), (name, field)
            compared += 1
    assert compared >= 3 * len([s for s in full.values() if s.role == "layer"])


def test_huge_finite_activations_are_neither_inf_nor_nonfinite_in_a_watch():
    """Issue 17: float32 activations of ~5e18 have squares past float32's range; the
    sampled steps' lean norms overflowed to inf and the watch blamed a NaN producer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    with torch.no_grad():
        model[2].weight.mul_(2e19)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with watch(model, optimizer=opt, sample_every=1, flush_every=2) as w:
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    report = w.report()
    # a sampled step's float32 norm overflowed: unknown ("-"), never inf, never a NaN
    assert report.layers["2"].out_rms is None
    assert not [f for f in report.findings if f.kind == "nonfinite"]


def test_norms_held_unstacked_until_the_window_equal_norms_stacked_each_step(tmp_path,
                                                                             monkeypatch):
    """On a CPU the per-step gradient norms are kept as the fused call returns them and
    stacked once per window (``StepBuffer.defer``): the store holds the same numbers as
    when each step stacks its own, windows of every length included."""
    from gradhealth.training import recorder

    def run(path, defer: int):
        monkeypatch.setattr(recorder, "DEFER_PARAMS", defer)
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with watch(model, opt, store=path, flush_every=7, sample_every=5) as w:
            for i in range(23):  # three full windows and a last one of two steps
                train_step(model, opt, w, i)
            assert w.recorder._host == (defer > 0)
        return load(path)

    held, stacked = run(tmp_path / "held.db", 256), run(tmp_path / "stacked.db", 0)
    np.testing.assert_array_equal(held.steps["global_norm"], stacked.steps["global_norm"])
    np.testing.assert_array_equal(held.steps["loss"], stacked.steps["loss"])
    for stat in ("weight_grad_norm", "update_ratio"):
        np.testing.assert_array_equal(held.layer_stat(stat)[2], stacked.layer_stat(stat)[2])
    assert len(held.steps) == 23 and np.isfinite(held.steps["global_norm"]).all()


def test_plain_steps_store_what_the_general_path_stores(tmp_path):
    """Most steps take the plain path (the record alone, ``Watch._begin_step``): with it
    switched off the store holds the same numbers, findings and sampled statistics, over
    sampled steps, windows, a layer unfrozen mid-run and the steps in between."""
    def run(path, plain: bool):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with watch(model, opt, store=path, flush_every=6, sample_every=7) as w:
            w._plain_ok = plain
            for i in range(40):
                if i == 17:
                    model.frozen.requires_grad_(True)
                train_step(model, opt, w, i)
                if i == 30:
                    plain_steps = w._plain
        return load(path), plain_steps

    (fast, was_plain), (general, _) = run(tmp_path / "p.db", True), run(tmp_path / "g.db", False)
    assert was_plain  # the switch is what the plain path reads
    for column in ("step", "loss", "global_norm", "update_ratio", "lr", "nonfinite", "skipped"):
        np.testing.assert_array_equal(fast.steps[column], general.steps[column])
    for stat in ("weight_grad_norm", "update_ratio", "out_rms", "dead_fraction"):
        a, b = fast.layer_stat(stat), general.layer_stat(stat)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
        np.testing.assert_array_equal(a[2], b[2])
    assert len(fast.steps) == 40 and fast.layer_stat("out_rms")[0].tolist() == [0, 7, 14, 21,
                                                                               28, 35]
    assert [(f.kind, f.module) for f in fast.findings] == [
        (f.kind, f.module) for f in general.findings]


def test_a_layer_unfrozen_mid_window_is_recorded_from_that_step_with_held_norms(tmp_path):
    """The window held unstacked (CPU) is copied out under the old layout when a layer is
    unfrozen in its middle; the new layer's gradient norms are stored from that step on."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD([p for p in model.parameters()], lr=0.01)
    with watch(model, opt, store=tmp_path / "r.db", flush_every=7, sample_every=None) as w:
        for i in range(16):
            if i == 9:
                model.frozen.requires_grad_(True)
            x, y = batch(i)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        assert w.recorder._host
    steps, names, values = load(tmp_path / "r.db").layer_stat("weight_grad_norm")
    frozen = values[:, names.index("frozen")]
    assert np.isnan(frozen[steps < 9]).all() and (frozen[steps >= 9] > 0).all()
    assert np.isfinite(values[:, names.index("head")]).all() and len(steps) == 16
