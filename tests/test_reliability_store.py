"""The run store loses nothing: a store being written cannot be wiped, a flush window is
one transaction, and a failed creation leaves nothing behind."""

from __future__ import annotations

import os
import random
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

import gradhealth
from gradhealth import RunStore, load
from gradhealth.errors import StoreError

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(gradhealth.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}

# A guarded run that writes forever: NaN gradients every 7th step (each one a skipped
# step, its skipped row and its finding), a flush every 3 steps.
WRITER = textwrap.dedent("""
    import math, sys
    import torch
    from torch import nn
    import gradhealth as gh
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with gh.guard(model, opt, store=sys.argv[1], flush_every=3, sample_every=4) as g:
        step = 0
        while True:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step % 7 == 6:
                model[2].weight.grad[0, 0] = math.nan
            opt.step()
            step += 1
            if step == 6:
                print("writing", flush=True)
""")


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL the writer and reap it (its pipes closed)."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def start_writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "writing", proc.stderr.read()
    return proc


def test_a_store_being_written_by_another_process_cannot_be_overwritten(tmp_path):
    path = tmp_path / "live.db"
    proc = start_writer(path)
    try:
        with pytest.raises(StoreError, match="being written by another run"):
            RunStore.create(path, overwrite=True)
        with pytest.raises(StoreError, match="being written by another run"):
            RunStore.open(path)
        before = len(load(path).steps)
        time.sleep(0.5)
        assert len(load(path).steps) > before  # the writer went on, into the same file
    finally:
        stop(proc)
    # the lock dies with its process: a crashed run's store can be replaced
    with RunStore.create(path, {"again": True}, overwrite=True):
        pass
    assert load(path).meta == {"again": True}


def test_a_store_open_in_this_process_cannot_be_overwritten_or_opened_twice(tmp_path):
    path = tmp_path / "run.db"
    store = RunStore.create(path)
    store.write_steps({"step": [0, 1]})
    with pytest.raises(StoreError, match="being written"):
        RunStore.create(path, overwrite=True)
    with pytest.raises(StoreError, match="being written"):
        RunStore.open(path)
    store.write_steps({"step": [2]})
    store.close()
    assert load(path).steps["step"].tolist() == [0, 1, 2]
    with RunStore.open(path) as again:  # closed: free to append
        again.write_steps({"step": [3]})
    assert len(load(path).steps) == 4


def commits(store: RunStore) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def test_a_flush_window_is_one_transaction(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    store = RunStore.create(tmp_path / "run.db")
    seen = commits(store)
    with gradhealth.guard(model, opt, store=store, flush_every=5, sample_every=5):
        assert len(seen) == 1  # the run's metadata, in one transaction
        for step in range(10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step == 3:
                model[0].weight.grad[0, 0] = float("nan")  # a skip, its row and its finding
            opt.step()
        windows = len(seen)
    store.close()
    assert windows == 3  # then steps, layer statistics, findings, skipped: one per window
    run = load(tmp_path / "run.db")
    assert len(run.steps) == 10 and [s.step for s in run.skipped] == [3]


def test_a_window_that_fails_midway_leaves_none_of_it(tmp_path):
    store = RunStore.create(tmp_path / "run.db")
    store.write_steps({"step": [0]})
    with pytest.raises(RuntimeError, match="killed here"), store.batch():
        store.write_steps({"step": [1, 2], "skipped": [0, 1]})
        store.write_layer_stats([1, 2], ["a"], ["weight_grad_norm"], np.ones((2, 1, 1)))
        raise RuntimeError("killed here")  # before its skipped row and finding
    store.write_skipped(5, "nonfinite")  # the store still works afterwards
    store.close()
    run = load(tmp_path / "run.db")
    assert run.steps["step"].tolist() == [0] and run.stats == []
    assert [s.step for s in run.skipped] == [5]


@pytest.mark.slow
def test_sigkill_never_tears_a_window(tmp_path):
    rng = random.Random(0)
    for i in range(20):
        path = tmp_path / f"run{i}.db"
        proc = start_writer(path)
        time.sleep(rng.uniform(0.0, 0.6))
        stop(proc)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        run = load(path)
        steps = run.steps["step"]
        assert len(steps) % 3 == 0 and (steps == np.arange(len(steps))).all()
        skipped = set(steps[run.steps["skipped"] == 1].tolist())
        assert skipped == {s for s in range(len(steps)) if s % 7 == 6}
        assert {s.step for s in run.skipped} == skipped  # every skip has its row...
        assert {s for s, f in zip(run.finding_steps, run.findings)
                if f.kind == "nonfinite"} == skipped  # ...and its finding


def test_a_store_that_cannot_be_created_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(StoreError, match="cannot create a run store .*writable file system"):
        RunStore.create(not_a_folder / "run.db")  # an OSError from the file system
    # a failure while the schema is written (a full disk, say): nothing half-made is left,
    # so the retry is not refused with "already exists"
    import gradhealth.store.writer as writer

    def full(conn, rows):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(writer, "initialise", full)
    with pytest.raises(StoreError, match="disk is full"):
        RunStore.create(tmp_path / "full.db")
    assert list(tmp_path.glob("full.db*")) == []
    monkeypatch.undo()
    with RunStore.create(tmp_path / "full.db"):
        pass
