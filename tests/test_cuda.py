"""CUDA: watch and guard on a GPU (skipped without one). The per-step path must not sync."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import no_hooks_left
from gradhealth import guard, load, watch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    # torch says so the first time the mode is set (seen with torch 2.11 on an H100)
    pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype feature"),
]


class Log(nn.Module):
    armed = False

    def forward(self, x):
        return torch.log(x) if self.armed else x


def net(dtype):
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), Log(),
                         nn.Linear(64, 10)).cuda().to(dtype)


def batch(i, dtype):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    return x.cuda().to(dtype), y.cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_watch_records_reference_norms_without_syncing(tmp_path, dtype):
    torch.manual_seed(0)
    model = net(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    with watch(model, opt, store=tmp_path / "r.db", flush_every=10, sample_every=10) as w:
        for i in range(20):
            x, y = batch(i, dtype)
            opt.zero_grad()
            # no step synchronises, sampled (0, 10) and flushing (9, 19) ones included;
            # the first one makes its cached constants (a host-to-device copy)
            torch.cuda.set_sync_debug_mode("error" if i else "default")
            try:
                loss = nn.functional.cross_entropy(model(x).float(), y)
                loss.backward()
                w.log_loss(loss)
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            totals.append(torch.nn.utils.get_total_norm(grads).float().item())
    run = load(tmp_path / "r.db")
    rtol = 1e-2 if dtype != torch.float32 else 1e-5
    np.testing.assert_allclose(run.steps["global_norm"], totals, rtol=rtol)
    assert no_hooks_left(model)


def test_guard_skips_a_nan_step_on_cuda(tmp_path):
    torch.manual_seed(0)
    model = net(torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with guard(model, opt, store=tmp_path / "g.db", flush_every=4, sample_every=4) as g:
        for i in range(8):
            model[3].armed = i == 5
            x, y = batch(i, torch.float32)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            g.log_loss(loss)
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
            same = all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
            assert same == (i == 5)
    assert g.skipped == 1
    [finding] = [f for f in g.findings if f.kind == "nonfinite"]
    assert finding.module == "3"
    assert all(torch.isfinite(p).all() for p in model.parameters())
