"""The run store: round trips, live reading, refusals, and surviving SIGKILL."""

from __future__ import annotations

import math
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

import gradhealth
from gradhealth import Finding, RunStore, load
from gradhealth.errors import StoreError
from gradhealth.store.format import SCHEMA_VERSION
from gradhealth.store.writer import environment

LAYERS = ["embed", "blocks.0.fc", "blocks.1.fc", "head"]
STATS = ["grad_norm", "weight_norm", "act_std"]


def _window(start: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(start, start + n)
    values = np.random.default_rng(seed).standard_normal((n, len(LAYERS), len(STATS)))
    return steps, values


def test_steps_round_trip_keeps_nan_inf_and_missing(tmp_path):
    path = tmp_path / "run.db"
    nan, inf = float("nan"), float("inf")
    with RunStore.create(path, {"model": "mlp"}) as store:
        store.write_steps({
            "step": np.array([0, 1, 2, 3]),
            "loss": np.array([2.5, nan, inf, -inf]),
            "global_norm": [1.0, None, inf, nan],  # None: not recorded
            "lr": np.full(4, 1e-3),
            "nonfinite": [0, 1, 1, 1],
            "skipped": [0, 1, 0, 0],
            "clip_pre_norm": [3.0, nan, 1e300, 0.0],
            "clipped": [1, None, 0, nan],
            "wall_time": [10.0, 11.0, 12.0, 13.0],
        })
        store.write_steps([{"step": 4, "loss": 1.25}, {"step": 5, "update_ratio": 1e-3}])
    steps = load(path).steps
    assert steps.columns == ("step", "loss", "global_norm", "update_ratio", "lr", "nonfinite",
                             "skipped", "clip_pre_norm", "clipped", "wall_time")
    assert len(steps) == 6
    np.testing.assert_array_equal(steps["step"], np.arange(6))
    np.testing.assert_array_equal(steps["loss"], [2.5, nan, inf, -inf, 1.25, nan])
    np.testing.assert_array_equal(steps.missing("loss"), [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(steps["global_norm"], [1.0, nan, inf, nan, nan, nan])
    np.testing.assert_array_equal(steps.missing("global_norm"), [0, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(steps["update_ratio"][4:], [nan, 1e-3])
    np.testing.assert_array_equal(steps["lr"][:4], [1e-3] * 4)
    np.testing.assert_array_equal(steps["nonfinite"], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(steps["skipped"], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(steps["clip_pre_norm"][:4], [3.0, nan, 1e300, 0.0])
    np.testing.assert_array_equal(steps["clipped"], [1.0, nan, 0.0, nan, nan, nan])
    np.testing.assert_array_equal(steps["wall_time"][:4], [10.0, 11.0, 12.0, 13.0])
    assert np.all(steps["wall_time"][4:] > 1e9)  # defaulted to the time of the flush
    assert steps["step"].dtype == np.int64 and steps["loss"].dtype == np.float64


def test_layer_stats_round_trip_bit_exact(tmp_path):
    path = tmp_path / "run.db"
    steps, values = _window(0, 5)
    values[1, 2, 0], values[3, 0, 1], values[4, 3, 2] = np.nan, np.inf, -np.inf
    with RunStore.create(path, {}) as store:
        store.write_layer_stats(steps, LAYERS, STATS, values)
        # a later flush over another set of layers (a sampled stat, a new layer)
        store.write_layer_stats([7], ["head", "extra"], ["act_std"], [[[5.0], [6.0]]])
    run = load(path)
    assert run.layers == LAYERS + ["extra"]
    assert run.stats == STATS
    for k, stat in enumerate(STATS):
        got_steps, names, got = run.layer_stat(stat)
        if stat == "act_std":
            np.testing.assert_array_equal(got_steps, [0, 1, 2, 3, 4, 7])
            assert names == LAYERS + ["extra"]
            np.testing.assert_array_equal(got[:5, :4], values[:, :, k])
            np.testing.assert_array_equal(got[:5, 4], np.full(5, np.nan))
            np.testing.assert_array_equal(got[5], [np.nan, np.nan, np.nan, 5.0, 6.0])
        else:
            np.testing.assert_array_equal(got_steps, steps)
            assert names == LAYERS
            np.testing.assert_array_equal(got, values[:, :, k])
    with pytest.raises(StoreError, match="no layer statistic 'dead'.*grad_norm"):
        run.layer_stat("dead")


def test_findings_skipped_meta_round_trip(tmp_path):
    path = tmp_path / "run.db"
    spike = Finding("spike", "", "critical", {"norm": 1e6, "threshold": 10.0, "z": math.inf},
                    "clip the gradient norm", "global norm jumped", ())
    vanish = Finding("vanishing", "layers.0", "warning", {"ratio": 2 ** -14.5, "per_layer": [1, 2]},
                     "use He init", modules=("layers.0", "layers.1"))
    meta = {"model": {"name": "MLP", "params": np.int64(1234)}, "config": {"flush_every": 50},
            "environment": environment()}
    with RunStore.create(path, meta) as store:
        store.write_findings([vanish], step=None)
        store.write_findings([spike], step=42)
        store.write_skipped(42, "nonfinite gradient", "layers.3")
        store.write_skipped(43, "spike", None)
        store.set_meta("config", {"flush_every": 25, "lr": float("nan")})
    run = load(path)
    assert run.findings == [vanish, Finding(**{**spike.to_dict(), "modules": ()})]
    assert run.findings[1].evidence["z"] == "inf"  # as in Finding.to_dict(): strict JSON
    assert run.finding_steps == [None, 42]
    assert [(s.step, s.reason, s.module) for s in run.skipped] == [
        (42, "nonfinite gradient", "layers.3"), (43, "spike", None)]
    assert run.meta["model"] == {"name": "MLP", "params": 1234}
    assert run.meta["config"] == {"flush_every": 25, "lr": "nan"}
    env = run.meta["environment"]
    assert {"python", "platform", "torch", "numpy", "gradhealth"} <= set(env)
    assert env["gradhealth"] == gradhealth.__version__
    assert run.schema_version == SCHEMA_VERSION


def test_reader_sees_each_flush_while_writer_keeps_the_file_open(tmp_path):
    path = tmp_path / "live.db"
    store = RunStore.create(path, {"run": "live"})
    try:
        for window in range(3):
            steps, values = _window(10 * window, 10, seed=window)
            store.write_steps({"step": steps, "loss": values[:, 0, 0]})
            store.write_layer_stats(steps, LAYERS, STATS, values)
            run = load(path)
            assert len(run.steps) == 10 * (window + 1)
            got_steps, _, got = run.layer_stat("grad_norm")
            np.testing.assert_array_equal(got_steps, np.arange(10 * (window + 1)))
            np.testing.assert_array_equal(got[-10:], values[:, :, 0])
    finally:
        store.close()
    assert len(load(path).steps) == 30


def test_a_closed_store_leaves_no_wal_files_after_reading(tmp_path):
    path = tmp_path / "done.db"
    with RunStore.create(path, {}) as store:
        store.write_steps({"step": [0, 1], "loss": [1.0, 2.0]})
        reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # live: WAL
        reader.close()
    assert len(load(path).steps) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.db"]
    with RunStore.open(path) as store:  # appending turns WAL on again
        store.write_steps({"step": [2], "loss": [3.0]})
        assert store._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert len(load(path).steps) == 3


def test_a_reader_open_at_close_keeps_the_wal_and_loses_nothing(tmp_path):
    path = tmp_path / "read.db"
    store = RunStore.create(path, {})
    store.write_steps({"step": [0], "loss": [1.0]})
    reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM steps").fetchone() == (1,)
    store.close()  # cannot leave WAL mode under the open read transaction: stays WAL
    reader.execute("COMMIT")
    reader.close()
    assert len(load(path).steps) == 1


def test_open_appends_and_a_rewritten_step_replaces_the_old_one(tmp_path):
    path = tmp_path / "run.db"
    with RunStore.create(path, {}) as store:
        store.write_steps({"step": [0, 1], "loss": [1.0, 2.0]})
        store.write_layer_stats([0, 1], ["a"], ["g"], np.ones((2, 1, 1)))
    with RunStore.open(path, durable=True) as store:  # a resumed run re-does step 1
        store.write_steps({"step": [1, 2], "loss": [2.5, 3.0]})
        store.write_layer_stats([1, 2], ["a"], ["g"], np.full((2, 1, 1), 2.0))
    run = load(path)
    np.testing.assert_array_equal(run.steps["loss"], [1.0, 2.5, 3.0])
    np.testing.assert_array_equal(run.layer_stat("g")[2], [[1.0], [2.0], [2.0]])


def test_create_refuses_an_existing_file_unless_told(tmp_path):
    path = tmp_path / "run.db"
    with RunStore.create(path, {"n": 1}) as store:
        store.write_steps({"step": [0]})
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        RunStore.create(path, {"n": 2})
    assert load(path).meta == {"n": 1}
    with RunStore.create(path, {"n": 2}, overwrite=True):
        pass
    run = load(path)
    assert run.meta == {"n": 2} and len(run.steps) == 0
    other = tmp_path / "weights.pt"
    other.write_bytes(b"not a run store" * 10)
    with pytest.raises(StoreError, match="refusing to overwrite"):
        RunStore.create(other, {}, overwrite=True)
    assert other.read_bytes() == b"not a run store" * 10


def test_load_rejects_what_is_not_a_readable_store(tmp_path):
    with pytest.raises(StoreError, match="no run store at"):
        load(tmp_path / "missing.db")
    with pytest.raises(StoreError, match="not a file"):
        load(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello world " * 100)
    with pytest.raises(StoreError, match="not a gradhealth run store"):
        load(junk)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a gradhealth run store"):
        load(foreign)
    newer = tmp_path / "newer.db"
    RunStore.create(newer, {}).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}.*version {SCHEMA_VERSION}"):
        load(newer)
    with pytest.raises(StoreError, match="newer"):
        RunStore.open(newer)


def test_bad_writes_raise_store_errors_and_write_nothing(tmp_path):
    path = tmp_path / "run.db"
    store = RunStore.create(path, {})
    with pytest.raises(StoreError, match="unknown column.*'grad_norm'"):
        store.write_steps({"step": [0], "grad_norm": [1.0]})
    with pytest.raises(StoreError, match="needs a 'step' column"):
        store.write_steps({"loss": [1.0]})
    with pytest.raises(StoreError, match="equal lengths"):
        store.write_steps({"step": [0, 1], "loss": [1.0]})
    with pytest.raises(StoreError, match="numbers or None"):
        store.write_steps({"step": [0], "loss": ["high"]})
    with pytest.raises(StoreError, match="integer steps"):
        store.write_steps({"step": [0.5]})
    with pytest.raises(StoreError, match=r"shape \(n_steps, n_layers, n_stats\) = \(2, 4, 3\)"):
        store.write_layer_stats([0, 1], LAYERS, STATS, np.zeros((2, 3, 4)))
    with pytest.raises(StoreError, match="duplicates"):
        store.write_layer_stats([0], ["a", "a"], ["g"], np.zeros((1, 2, 1)))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.write_steps({"step": [0]})
    run = load(path)
    assert len(run.steps) == 0 and run.layers == [] and run.stats == []


def test_table_to_pandas(tmp_path):
    path = tmp_path / "run.db"
    with RunStore.create(path, {}) as store:
        store.write_steps({"step": [0, 1], "loss": [1.0, 0.5]})
    steps = load(path).steps
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            steps.to_pandas()
    else:
        assert steps.to_pandas()["loss"].tolist() == [1.0, 0.5]


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from gradhealth.store import RunStore

    layers = [f"layers.{i}" for i in range(200)]
    stats = ["grad_norm", "weight_norm", "act_std"]
    store = RunStore.create(sys.argv[1], {"run": "killed"})
    window = 10
    start = 0
    while True:  # runs until the parent kills it
        steps = np.arange(start, start + window)
        store.write_steps({"step": steps, "loss": 1.0 / (1.0 + steps)})
        store.write_layer_stats(steps, layers, stats, np.ones((window, len(layers), len(stats))))
        print(start + window - 1, flush=True)  # only after both transactions committed
        start += window
""")


def test_sigkill_loses_no_committed_flush(tmp_path):
    path = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(gradhealth.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        reported = []
        deadline = time.monotonic() + 60
        while len(reported) < 100 and time.monotonic() < deadline:  # past a WAL checkpoint
            line = proc.stdout.readline()
            if not line:
                break
            reported.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reported += [int(line) for line in proc.stdout.read().split()]
        stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert len(reported) >= 100, stderr

    run = load(path)  # read-only, with the dead writer's WAL still on disk
    last = reported[-1]
    present = set(run.steps["step"].tolist())
    assert set(range(last + 1)) <= present
    got_steps, names, values = run.layer_stat("act_std")
    assert set(range(last + 1)) <= set(got_steps.tolist())
    assert len(names) == 200 and np.all(values == 1.0)

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def _rows_as_written(path: Path) -> dict[str, list]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall()
                for t in ("steps", "layer_stats")}


def test_steps_and_layer_stats_are_the_rows_of_one_insert_per_row(tmp_path):
    """Columns of every kind (arrays, lists with None and NaN, ints, a step written twice,
    windows longer than one INSERT statement) against the per-row encoding written one
    row at a time: the same rows, row ids and replacements, bit for bit."""
    rng = np.random.default_rng(3)
    n = 150
    steps = np.arange(n) + 10
    steps[100] = steps[20]  # a step written again in the same window replaces the first
    pick = [1.5, -0.0, math.nan, math.inf, -math.inf, None, 1e-300, 3]
    columns: dict = {"step": steps}
    for name in ("loss", "global_norm", "update_ratio", "lr", "clip_pre_norm"):
        columns[name] = [pick[i] if i < len(pick) else float(v)
                         for i, v in zip(rng.integers(0, 2 * len(pick), n), rng.normal(size=n))]
    columns["global_norm"] = np.array(columns["global_norm"], dtype=float)  # None -> NaN
    columns["nonfinite"] = rng.integers(0, 2, n)
    columns["skipped"] = [None if v == 2 else int(v) for v in rng.integers(0, 3, n)]
    columns["clipped"] = [[0, 1, None, math.nan, 1.0][int(i)] for i in rng.integers(0, 5, n)]
    columns["wall_time"] = (1.7e9 + np.arange(n)).tolist()
    values = rng.normal(size=(n, 3, 2))
    values[rng.integers(0, n, 10), rng.integers(0, 3, 10), rng.integers(0, 2, 10)] = [
        math.nan, math.inf, -math.inf, -0.0, 0.0] * 2
    got, reference = tmp_path / "got.db", tmp_path / "reference.db"
    with RunStore.create(got) as store:
        assert store.write_steps(columns) == n
        store.write_layer_stats(steps, ["a", "b", "c"], ["s", "t"], values)
        store.write_steps({"step": steps[:70], "loss": np.full(70, 0.5)})  # again: replaced
    rows = []
    for i in range(n):  # the per-row encoding
        row, mask = [int(steps[i])], 0
        for bit, name in enumerate(("loss", "global_norm", "update_ratio", "lr",
                                    "clip_pre_norm")):
            v = columns[name][i]
            row.append(None if v is None or v != v else float(v))
            mask |= int(v is not None and v != v) << bit
        row += [0 if v is None else int(v) for v in (columns["nonfinite"][i],
                                                     columns["skipped"][i])]
        row.insert(7, row.pop(5))  # clip_pre_norm after skipped
        v = columns["clipped"][i]
        rows.append(row + [None if v is None or v != v else int(v), columns["wall_time"][i],
                           mask])
    RunStore.create(reference).close()
    with sqlite3.connect(reference) as conn:
        conn.execute("INSERT INTO layers (name) VALUES ('a'), ('b'), ('c')")
        conn.execute("INSERT INTO stats (name) VALUES ('s'), ('t')")
        conn.execute("INSERT INTO layouts (layer_ids) VALUES ('[1, 2, 3]')")
        insert = "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        conn.executemany(insert, rows)
        conn.executemany("INSERT OR REPLACE INTO layer_stats VALUES (?, ?, 1, ?)",
                         [(k + 1, int(s), values[i, :, k].astype("<f8").tobytes())
                          for k in range(2) for i, s in enumerate(steps)])
        conn.executemany(insert, [(int(s), 0.5, None, None, None, 0, 0, None, None, 0.0, 0)
                                  for s in steps[:70]])
    written, expected = _rows_as_written(got), _rows_as_written(reference)
    assert len(written["steps"]) == n - 1 and len(written["layer_stats"]) == 2 * (n - 1)
    assert written["layer_stats"] == expected["layer_stats"]
    assert [r[:-2] + r[-1:] for r in written["steps"]] == [
        r[:-2] + r[-1:] for r in expected["steps"]]
    rewritten = set(steps[:70].tolist())
    assert [r[-2] for r in written["steps"] if r[1] not in rewritten] == [
        r[-2] for r in expected["steps"] if r[1] not in rewritten]
    assert all(r[-2] > 1.7e9 + n for r in written["steps"] if r[1] in rewritten)  # now
