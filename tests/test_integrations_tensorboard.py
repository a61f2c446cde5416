"""TensorBoard export: event files that tensorboard's own reader loads, numbers from the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from gradhealth import (
    load,  # noqa: E402
    watch,  # noqa: E402
)
from gradhealth.errors import ConfigError  # noqa: E402
from gradhealth.integrations.tensorboard import TensorBoardExporter, export_run  # noqa: E402


def read(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def train(path, steps: int = 7, nan_at: int | None = None):
    """A plain loop under gh.watch; returns the model and the reference global norms."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms, losses = [], []
    with watch(model, opt, store=path, flush_every=3, sample_every=4) as w:
        for i in range(steps):
            g = torch.Generator().manual_seed(i)
            x, y = torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            if i == nan_at:
                loss = loss * float("nan")
            loss.backward()
            w.log_loss(loss)
            norms.append(torch.nn.utils.get_total_norm(
                [p.grad for p in model.parameters()]).item())
            losses.append(loss.item())
            opt.step()
    return norms, losses


def test_export_run_writes_what_the_store_and_the_reference_hold(tmp_path):
    norms, losses = train(tmp_path / "run.db")
    export_run(tmp_path / "run.db", tmp_path / "tb")

    acc = read(tmp_path / "tb")
    steps, values = scalars(acc, "gradhealth/global_norm")
    assert steps == list(range(7))
    np.testing.assert_allclose(values, norms, rtol=1e-5)
    np.testing.assert_allclose(scalars(acc, "gradhealth/loss")[1], losses, rtol=1e-6)
    assert scalars(acc, "gradhealth/update_ratio")[0] == [0, 4]  # sampled steps only
    assert scalars(acc, "gradhealth/findings")[1] == [0.0] * 7
    run = load(tmp_path / "run.db")
    _, layers, grad = run.layer_stat("weight_grad_norm")
    assert layers == ["0", "2"]
    for j, layer in enumerate(layers):
        np.testing.assert_allclose(scalars(acc, f"gradhealth/grad_norm/{layer}")[1], grad[:, j],
                                   rtol=1e-6)
    wall = [e.wall_time for e in acc.Scalars("gradhealth/loss")]
    np.testing.assert_allclose(wall, run.steps["wall_time"])  # the run's own clock


def test_live_export_from_a_watch_appends_only_new_steps(tmp_path):
    model = nn.Linear(4, 1)
    with watch(model, store=tmp_path / "run.db", flush_every=2, sample_every=None) as w, \
            TensorBoardExporter(tmp_path / "tb") as tb:
        for i in range(5):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            w.step()
            model.zero_grad()
            if i in (2, 4):
                assert tb.export(w) == {2: 3, 4: 2}[i]  # flushed first, then read
        assert tb.export(w) == 0
    assert scalars(read(tmp_path / "tb"), "gradhealth/global_norm")[0] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="store="):
        with watch(nn.Linear(2, 2)) as bare:
            export_run(bare, tmp_path / "tb2")


def test_findings_become_a_count_and_text(tmp_path):
    train(tmp_path / "run.db", steps=6, nan_at=4)
    export_run(tmp_path / "run.db", tmp_path / "tb")
    acc = read(tmp_path / "tb")
    _, counts = scalars(acc, "gradhealth/findings")
    assert counts[:4] == [0.0] * 4 and counts[4] >= 1
    assert scalars(acc, "gradhealth/nonfinite")[1] == [0, 0, 0, 0, 1, 1]
    texts = [e.tensor_proto.string_val[0].decode() for e in
             acc.Tensors("gradhealth/findings/text_summary")]
    assert any("nonfinite" in t and "the loss is not" in t for t in texts)
