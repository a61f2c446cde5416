"""training.session: every model an optimizer steps is found and watched, without an edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module
from torch.optim import optimizer as torch_optimizer

from conftest import no_hooks_left
from gradhealth import load
from gradhealth.training import discover
from gradhealth.training.session import Session, sibling


def no_global_hooks() -> bool:
    return not (torch_module._global_forward_pre_hooks or torch_module._global_forward_hooks
                or torch_optimizer._global_optimizer_pre_hooks
                or torch_optimizer._global_optimizer_post_hooks)


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, n_out))


def test_a_gan_gets_a_watch_and_a_store_per_optimizer(tmp_path):
    backward, scale = torch.autograd.backward, torch.amp.GradScaler.scale
    session = Session(store=tmp_path / "run.db", flush_every=4, sample_every=3,
                      meta={"script": "gan.py"}).start()
    gen, disc = mlp(4, 2), mlp(2, 1)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
    losses: dict[str, list[float]] = {"d": [], "g": []}
    norms: dict[str, list[float]] = {"d": [], "g": []}
    for _ in range(10):
        fake = gen(torch.randn(8, 4))
        opt_d.zero_grad()
        real_loss = disc(torch.randn(8, 2)).mean()
        real_loss.backward()  # two backward calls: the step's loss is their sum
        fake_loss = -disc(fake.detach()).mean()
        fake_loss.backward()
        losses["d"].append(real_loss.item() + fake_loss.item())
        norms["d"].append(nn.utils.get_total_norm([p.grad for p in disc.parameters()]).item())
        opt_d.step()
        opt_g.zero_grad()
        loss_g = disc(fake).mean()
        loss_g.backward()
        losses["g"].append(loss_g.item())
        norms["g"].append(nn.utils.get_total_norm([p.grad for p in gen.parameters()]).item())
        opt_g.step()
    session.close("finished")

    assert session.problems == []
    assert [w.name for w in session.watched] == ["Sequential", "Sequential"]
    assert [w.watch.target for w in session.watched] == [disc, gen]  # D steps first
    paths = [w.store for w in session.watched]
    assert paths == [tmp_path / "run.db", sibling(tmp_path / "run.db", 2, "Sequential")]
    for key, path in zip("dg", paths):
        run = load(path)
        assert run.meta["outcome"] == "finished" and run.meta["command"] == {"script": "gan.py"}
        assert len(run.steps) == 10  # the first step included
        np.testing.assert_allclose(run.steps["loss"], losses[key], rtol=1e-5)
        np.testing.assert_allclose(run.steps["global_norm"], norms[key], rtol=1e-5)
        assert "grad_rms" in run.stats  # sampled steps measured the activations too
    # nothing left attached to torch
    assert no_global_hooks() and no_hooks_left(gen) and no_hooks_left(disc)
    assert not opt_g._optimizer_step_pre_hooks and not opt_d._optimizer_step_post_hooks
    assert torch.autograd.backward is backward and torch.amp.GradScaler.scale is scale


def test_a_closure_step_an_unowned_tensor_and_a_model_called_later(tmp_path):
    session = Session(store=tmp_path / "run.db", flush_every=2, sample_every=None).start()
    first = mlp(3, 1)
    opt = torch.optim.SGD(first.parameters(), lr=0.01)
    x = torch.randn(8, 3)
    for _ in range(2):
        opt.zero_grad()
        first(x).pow(2).mean().backward()
        opt.step()
    # a model first called after the recording of roots stopped: found among live modules
    late = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    lbfgs = torch.optim.LBFGS(late.parameters(), max_iter=3)
    closure_losses = []

    def closure():
        lbfgs.zero_grad()
        loss = (late(x) - 1).pow(2).mean()
        loss.backward()
        closure_losses.append(loss.item())
        return loss

    for _ in range(3):
        closure_losses.append(None)
        lbfgs.step(closure)
    loose = torch.randn(5, requires_grad=True)  # no module holds it
    opt_loose = torch.optim.SGD([loose], lr=0.1)
    for _ in range(2):
        opt_loose.zero_grad()
        loose.pow(2).sum().backward()
        opt_loose.step()
    session.close("finished")

    targets = [w.watch.target for w in session.watched]
    assert targets[:2] == [first, late] and isinstance(targets[2], discover.Loose)
    assert [w.watch.steps for w in session.watched] == [2, 3, 2]
    late_run = load(session.watched[1].store)
    firsts = [closure_losses[i + 1] for i, v in enumerate(closure_losses) if v is None]
    np.testing.assert_allclose(late_run.steps["loss"], firsts, rtol=1e-6)  # first evaluation
    loose_run = load(session.watched[2].store)
    assert loose_run.layers == [""] and len(loose_run.steps) == 2
    assert no_global_hooks() and no_hooks_left(late)


def test_a_gradscaler_loss_is_recorded_unscaled(tmp_path):
    session = Session(store=tmp_path / "run.db", flush_every=3, sample_every=None).start()
    model = mlp(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        losses.append(loss.item())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    session.close("finished")
    run = load(tmp_path / "run.db")
    np.testing.assert_allclose(run.steps["loss"], losses, rtol=1e-6)
    assert session.watched[0].watch.scaler is scaler and "update" not in vars(scaler)


def test_only_rank_zero_writes_and_a_failing_set_up_never_breaks_training(tmp_path,
                                                                          monkeypatch):
    (tmp_path / "run.db").write_text("someone else's file")
    session = Session(store=tmp_path / "run.db", flush_every=2).start()
    model = mlp(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 2)).sum().backward()
        opt.step()  # the store cannot be created: this optimizer goes unwatched
    session.close("finished")
    assert session.watched == [] and "already exists" in session.problems[0]
    assert (tmp_path / "run.db").read_text() == "someone else's file"

    from gradhealth.measure import distributed
    monkeypatch.setattr(distributed, "is_rank_zero", lambda: False)
    session = Session(store=tmp_path / "other.db", flush_every=2).start()
    opt.zero_grad()
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    session.close("finished")
    assert session.watched[0].store is None and not (tmp_path / "other.db").exists()
    assert session.watched[0].watch.steps == 1


@pytest.mark.parametrize("called", ["outer", "inner"])
def test_owner_prefers_the_root_called_then_the_smallest_module_holding_all(called):
    inner = mlp(3, 3)
    outer = nn.Sequential(inner, nn.Linear(3, 1))
    opt = torch.optim.SGD(inner.parameters(), lr=0.1)
    roots = [outer] if called == "outer" else [inner]
    assert discover.owner(discover.optimizer_params(opt), roots) is roots[0]
    assert discover.owner(discover.optimizer_params(opt), []) is inner  # gc search


def test_an_optimizer_the_script_watches_itself_is_left_to_its_watch(tmp_path):
    from gradhealth import watch

    session = Session(store=tmp_path / "run.db").start()
    model = mlp(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, store=tmp_path / "own.db") as w:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 2)).sum().backward()
            opt.step()
    session.close("finished")
    assert session.watched == [] and "watches it itself" in session.problems[0]
    assert w.steps == 2 and not (tmp_path / "run.db").exists()


def test_a_dead_weak_proxy_among_live_objects_does_not_stop_the_search(tmp_path):
    """``discover.search`` walks every object alive: a ``weakref.proxy`` whose object is
    gone raises ReferenceError when asked its class, and must be passed over (a session
    once left an optimizer unwatched for it)."""
    import gc
    import weakref

    class Thing:
        pass

    thing = Thing()
    proxy = weakref.proxy(thing)
    holder = [proxy]  # keeps the proxy alive, tracked by gc
    del thing
    gc.collect()
    model = mlp(3, 1)
    wanted = {id(p) for p in model.parameters()}
    assert discover.search(wanted) is model
    assert holder  # the dead proxy was among the objects searched


def test_a_stand_in_kept_by_torch_does_not_keep_the_session_or_its_model_alive(tmp_path):
    """torch.overrides indexes the functions of torch's namespaces once and keeps them: an
    index built while the session stands in for ``torch.autograd.backward`` holds the
    stand-in for good. Holding it must not hold the session, its watches or the model (a
    DDP model kept into the interpreter's shutdown aborted a torchrun rank there)."""
    import gc
    import weakref

    session = Session(store=tmp_path / "run.db", flush_every=2, sample_every=None).start()
    kept = [torch.autograd.backward, torch.amp.GradScaler.scale]  # as torch's index does
    model = mlp(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        opt.step()
    session.close("finished")
    assert len(session.watched) == 1 and session.watched[0].watch.steps == 3
    gone = weakref.ref(model), weakref.ref(session)
    del session, model, opt, loss
    gc.collect()
    assert [ref() for ref in gone] == [None, None]
    # the kept stand-ins still work, and see nothing: they pass straight through
    x = torch.ones(2, requires_grad=True)
    kept[0]((x * 3).sum())
    assert x.grad is not None and x.grad.tolist() == [3.0, 3.0]
