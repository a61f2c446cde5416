"""Incidents through gh.watch: live, in the report, in the run store (schema 2), and for
stores written before there were incidents (schema 1: rebuilt on reading, upgraded on
appending)."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from torch import nn

from gradhealth import load, watch
from gradhealth.report.html import render_run_html
from gradhealth.store.format import SCHEMA_VERSION
from gradhealth.store.writer import RunStore


def train(path=None, steps: int = 160, bad: int = 100, every: int = 10):
    """A small ReLU MLP on a fixed task; batch ``bad`` is x40 with wrong labels."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 16, generator=g), torch.randint(0, 4, (512,), generator=g)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with watch(model, opt, store=path, sample_every=every, flush_every=every) as w:
        for step in range(steps):
            idx = torch.randint(0, 512, (64,), generator=g)
            xb, yb = x[idx], y[idx]
            if step == bad:
                xb, yb = xb * 40, (yb + 1) % 4
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            w.log_loss(loss)
            opt.step()
    return w


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("incidents") / "run.db"
    train(path)
    return path


def test_a_bad_batch_is_one_incident_live_in_the_report_and_in_the_store(run_path):
    w = train()
    [first, *_] = w.incidents
    assert first.kind == "spike" and first.onset == 100 and first.severity != "info"
    assert first.reported["spike"] >= 100 and first.findings >= 1
    report = w.report()
    assert report.incidents == w.incidents
    assert report.to_dict()["incidents"][0]["onset"] == 100
    text = str(report)
    assert text.index("incident 1: spike") < text.index("gradient flow")
    run = load(run_path)
    assert run.schema_version == SCHEMA_VERSION == 2
    assert [(i.kind, i.onset, i.kinds) for i in run.incidents] == \
        [(i.kind, i.onset, i.kinds) for i in w.incidents]
    assert run.incidents[0].remedy == w.incidents[0].remedy
    page = render_run_html(run)
    assert page.index("Incidents (") < page.index("Training: global norm")
    assert "incident 1: spike" in page and "from step 100" in page


def as_version_1(src, dst) -> None:
    dst.write_bytes(src.read_bytes())
    conn = sqlite3.connect(dst, isolation_level=None)
    try:
        conn.execute("DROP TABLE incidents")
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()


def test_a_version_1_store_reads_with_its_incidents_rebuilt(run_path, tmp_path):
    old = tmp_path / "v1.db"
    as_version_1(run_path, old)
    run, new = load(old), load(run_path)
    assert run.schema_version == 1
    assert [(i.kind, i.onset, i.kinds, i.findings) for i in run.incidents] == \
        [(i.kind, i.onset, i.kinds, i.findings) for i in new.incidents]
    assert "Incidents (" in render_run_html(run)


def test_appending_to_a_version_1_store_upgrades_it(run_path, tmp_path):
    old = tmp_path / "v1.db"
    as_version_1(run_path, old)
    with RunStore.open(old) as store:
        store.write_incidents(load(run_path).incidents)
    run = load(old)
    assert run.schema_version == 2 and run.incidents == load(run_path).incidents
