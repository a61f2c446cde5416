"""A disk that fills up in the middle of a watched run: training goes on, the watch stops
writing and warns once (``StoreWriteWarning``), and the store keeps every window committed
before; the watch's findings and report still work, and closing it does not raise.

The disk fills for real: the training runs in a child process whose file-size limit
(``RLIMIT_FSIZE``, SIGXFSZ ignored) is set a few windows above the store's size once the
store is open, so SQLite's next write past it fails with EFBIG, as on a full disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gradhealth
from gradhealth import load
from gradhealth.cli import main

ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(gradhealth.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
STEPS, FLUSH = 300, 5

CHILD = textwrap.dedent(f"""
    import json, math, os, resource, signal, sys, warnings
    import torch
    from torch import nn
    import gradhealth as gh
    from gradhealth.errors import StoreWriteWarning

    path = sys.argv[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
    trained = 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        w = gh.guard(model, opt, store=path, flush_every={FLUSH}, sample_every=10)
        biggest = max(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
        limit = biggest + 160 * 1024  # a few windows more fit
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        for step in range({STEPS}):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            if step % 7 == 6:
                model[2].weight.grad[0, 0] = math.nan  # a guard skip and its finding
            opt.step()
            trained += 1
        kinds = sorted({{f.kind for f in w.findings}})
        ok = w.report().ok
        w.close()
    print(json.dumps({{"trained": trained, "watch_steps": w.steps, "skipped": w.skipped,
                      "kinds": kinds, "report_ok": ok,
                      "warnings": [(type(m.message).__name__, str(m.message)) for m in seen
                                   if issubclass(m.category, gh.errors.GradHealthWarning)]}}))
""")


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32",
                    reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_stops_the_store_not_the_training(tmp_path, capsys):
    path = tmp_path / "run.db"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trained"] == out["watch_steps"] == STEPS  # training went on to the end
    assert out["skipped"] == STEPS // 7 and "nonfinite" in out["kinds"]
    assert out["report_ok"] is False
    assert len(out["warnings"]) == 1, out["warnings"]  # warned once
    kind, message = out["warnings"][0]
    assert kind == "StoreWriteWarning"
    assert "could not be written" in message and "training goes on" in message

    with sqlite3.connect(path) as conn:  # what was committed is intact
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    run = load(path)
    steps = run.steps["step"].tolist()
    assert 2 * FLUSH <= len(steps) < STEPS and len(steps) % FLUSH == 0  # whole windows
    assert steps == list(range(len(steps)))
    assert f"up to step {len(steps) - 1}" in message
    assert {s.step for s in run.skipped} == {s for s in steps if s % 7 == 6}
    assert "summary" not in run.meta  # written at close, after the disk was full
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    capsys.readouterr()


def test_a_disk_that_fills_at_close_costs_the_summary_only(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from gradhealth import RunStore, watch
    from gradhealth.errors import StoreWriteWarning

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    w = watch(model, opt, store=tmp_path / "run.db", flush_every=5, sample_every=5)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    monkeypatch.setattr(RunStore, "_transaction", _failing)
    with pytest.warns(StoreWriteWarning, match="disk is full.*every step up to step 9"):
        w.close()  # its summary cannot be written: a warning, not an exception
    w.close()
    monkeypatch.undo()
    run = load(tmp_path / "run.db")
    assert len(run.steps) == 10 and "summary" not in run.meta


def _failing(self, what):
    from gradhealth.errors import StoreError

    raise StoreError(f"cannot {what} in {self.path}: SQLite says database or disk is full.")
