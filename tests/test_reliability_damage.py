"""Damaged and crafted run stores: ``gh.load`` and ``gradhealth report`` either work or say
the store is damaged (``StoreError`` / exit 2 with a message), never another exception.

A real store is written by a guarded, clipped, sampled run; each crafted case makes one
specific corruption of a copy (wrong JSON, wrong types, missing columns or tables,
recursion bombs, huge, infinite and NaN values, wrong blob lengths, unknown ids, a wrong
identity, truncation), and each byte-flip case flips random bytes of a copy.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradhealth as gh
from gradhealth.cli import main
from gradhealth.clip import ClipNorm
from gradhealth.errors import StoreError

BOMB = "[" * 100_000 + "]" * 100_000  # json.loads recurses once per level
DEEP_DICT = '{"a":' * 50_000 + "1" + "}" * 50_000
HUGE = 1e308


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """A store with every table filled: steps, clipping, a skipped step and its finding,
    sampled activation statistics (quantiles included), update ratios."""
    path = tmp_path_factory.mktemp("damage") / "base.db"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with gh.guard(model, opt, store=path, flush_every=5, sample_every=3,
                  clip=ClipNorm(1.0)) as w:
        for step in range(20):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            if step == 7:
                model[0].weight.grad[0, 0] = float("nan")
            opt.step()
    run = gh.load(path)
    assert run.findings and run.skipped and run.incidents and "out_q50" in run.stats
    return path


def sql(*statements: str) -> Callable[[Path], None]:
    def craft(path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for s in statements:
                conn.execute(s)
        finally:
            conn.close()
    return craft


def sql_args(statement: str, *args: object) -> Callable[[Path], None]:
    def craft(path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(statement, args)
        finally:
            conn.close()
    return craft


def loose(table: str, columns: str) -> Callable[[Path], None]:
    """Rebuild ``table`` without its constraints (NOT NULL, types), keeping its rows, so a
    crafted row can hold NULL or any type."""
    return sql(f"CREATE TABLE tmp AS SELECT * FROM {table}", f"DROP TABLE {table}",
               f"CREATE TABLE {table} ({columns})", f"INSERT INTO {table} SELECT * FROM tmp",
               "DROP TABLE tmp")


def then(*crafts: Callable[[Path], None]) -> Callable[[Path], None]:
    def craft(path: Path) -> None:
        for c in crafts:
            c(path)
    return craft


def truncate(size: int | float) -> Callable[[Path], None]:
    def craft(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(size * len(data)) if isinstance(size, float) else size])
    return craft


def stat_blob(stat: str, blob: object) -> Callable[[Path], None]:
    return sql_args("UPDATE layer_stats SET value = ? WHERE stat_id = "
                    "(SELECT stat_id FROM stats WHERE name = ?)", blob, stat)


def every_value(stat: str, value: float) -> Callable[[Path], None]:
    """Every layer of ``stat`` at every step set to ``value`` (bit-exact float64)."""
    def craft(path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows = conn.execute("SELECT l.rowid, length(l.value) FROM layer_stats l JOIN stats s "
                                "USING (stat_id) WHERE s.name = ?", (stat,)).fetchall()
            import struct
            for rowid, n in rows:
                conn.execute("UPDATE layer_stats SET value = ? WHERE rowid = ?",
                             (struct.pack(f"<{n // 8}d", *[value] * (n // 8)), rowid))
        finally:
            conn.close()
    return craft


FINDINGS_COLS = ("finding_id INTEGER PRIMARY KEY, step, kind, module, severity, evidence, "
                 "remedy, message, modules")
INCIDENT_COLS = ("incident_id INTEGER PRIMARY KEY, onset, end_step, kind, module, severity, "
                 "outcome, message, remedy, data")
CRAFTED: dict[str, Callable[[Path], None]] = {
    # the file itself
    "empty file": truncate(0),
    "truncated to 100 bytes": truncate(100),
    "truncated to half": truncate(0.5),
    "not sqlite": lambda p: p.write_bytes(b"GHST" * 4096),
    "wrong application_id": sql("PRAGMA application_id = 1234"),
    "schema version 0": sql("PRAGMA user_version = 0"),
    "schema version 99": sql("PRAGMA user_version = 99"),
    "junk wal next to it": lambda p: Path(f"{p}-wal").write_bytes(b"\x37\x7f\x06\x82" * 2000),
    # tables and columns
    "meta dropped": sql("DROP TABLE meta"),
    "steps dropped": sql("DROP TABLE steps"),
    "findings dropped": sql("DROP TABLE findings"),
    "layer_stats dropped": sql("DROP TABLE layer_stats"),
    "layouts dropped": sql("DROP TABLE layouts"),
    "steps without loss": sql("ALTER TABLE steps DROP COLUMN loss"),
    "findings without modules": sql("ALTER TABLE findings DROP COLUMN modules"),
    # metadata
    "meta not json": sql("UPDATE meta SET value = '{not json' WHERE key = 'config'"),
    "meta recursion bomb": sql_args("UPDATE meta SET value = ? WHERE key = 'config'", BOMB),
    "meta deep dict": sql_args("UPDATE meta SET value = ? WHERE key = 'modules'", DEEP_DICT),
    "meta modules a number": sql("UPDATE meta SET value = '5' WHERE key = 'modules'"),
    "meta config a list": sql("UPDATE meta SET value = '[1, 2]' WHERE key = 'config'"),
    "meta clip threshold text": sql("UPDATE meta SET value = '\"x\"' "
                                    "WHERE key = 'clip_threshold'"),
    "meta clip threshold 1e308": sql("UPDATE meta SET value = '1e308' "
                                     "WHERE key = 'clip_threshold'"),
    "meta clip threshold Infinity": sql("UPDATE meta SET value = 'Infinity' "
                                        "WHERE key = 'clip_threshold'"),
    "meta clip threshold NaN": sql("UPDATE meta SET value = 'NaN' WHERE key = 'clip_threshold'"),
    "meta value a blob": then(loose("meta", "key, value"),
                              sql("UPDATE meta SET value = x'fffe00' WHERE key = 'model'")),
    "meta value null": then(loose("meta", "key, value"),
                            sql("UPDATE meta SET value = NULL WHERE key = 'model'")),
    "meta key a number": then(loose("meta", "key, value"),
                              sql("INSERT INTO meta VALUES (7, '1')")),
    # per-step rows
    "loss text": sql("UPDATE steps SET loss = 'abc' WHERE step = 3"),
    "global norm 1e308": sql(f"UPDATE steps SET global_norm = {HUGE}"),
    "global norm -1e308": sql(f"UPDATE steps SET global_norm = -{HUGE}, loss = -{HUGE}"),
    "global norm 1e290 and 1e-300": sql("UPDATE steps SET global_norm = CASE WHEN step % 2 "
                                        "THEN 1e290 ELSE 1e-300 END, loss = 1e300"),
    "loss +-1e308": sql(f"UPDATE steps SET loss = CASE WHEN step % 2 THEN {HUGE} "
                        f"ELSE -{HUGE} END"),
    "pre-clip norm 1e308": sql(f"UPDATE steps SET clip_pre_norm = {HUGE}"),
    "step numbers huge": sql("UPDATE steps SET step = step + 9000000000000000000"),
    "step numbers negative": sql("UPDATE steps SET step = -step - 1000"),
    "nonfinite text": sql("UPDATE steps SET nonfinite = 'yes' WHERE step = 2"),
    "skipped text": sql("UPDATE steps SET skipped = 'no' WHERE step = 2"),
    "nan mask text": sql("UPDATE steps SET nan_mask = 'x'"),
    "nan mask huge": sql("UPDATE steps SET nan_mask = 9223372036854775807"),
    "wall time blob": sql("UPDATE steps SET wall_time = x'00'"),
    "clipped text": sql("UPDATE steps SET clipped = 'maybe'"),
    "update ratio inf": sql("UPDATE steps SET update_ratio = 1e999"),
    # findings
    "evidence not json": sql("UPDATE findings SET evidence = 'nope'"),
    "evidence a list": sql("UPDATE findings SET evidence = '[1, 2]'"),
    "evidence recursion bomb": sql_args("UPDATE findings SET evidence = ?", BOMB),
    "evidence huge values": sql(f"UPDATE findings SET evidence = "
                                f"'{{\"norm\": {HUGE}, \"z\": Infinity, \"r\": NaN}}'"),
    "modules a number": sql("UPDATE findings SET modules = '5'"),
    "modules numbers": sql("UPDATE findings SET modules = '[1, 2]'"),
    "modules recursion bomb": sql_args("UPDATE findings SET modules = ?", BOMB),
    "unknown severity": sql("UPDATE findings SET severity = 'fatal'"),
    "unknown kind": sql("UPDATE findings SET kind = 'gremlins'"),
    "finding module null": then(loose("findings", FINDINGS_COLS),
                                sql("UPDATE findings SET module = NULL")),
    "finding message a blob": then(loose("findings", FINDINGS_COLS),
                                   sql("UPDATE findings SET message = x'00ff'")),
    "finding step text": then(loose("findings", FINDINGS_COLS),
                              sql("UPDATE findings SET step = 'later'")),
    # skipped steps
    "skipped step text": then(loose("skipped", "skip_id INTEGER PRIMARY KEY, step, reason, module"),
                              sql("UPDATE skipped SET step = 'x'")),
    "skipped reason number": then(loose("skipped",
                                        "skip_id INTEGER PRIMARY KEY, step, reason, module"),
                                  sql("UPDATE skipped SET reason = 3, module = 4")),
    # incidents (schema 2)
    "incidents dropped": sql("DROP TABLE incidents"),
    "incident data not json": sql("UPDATE incidents SET data = 'nope'"),
    "incident data a list": sql("UPDATE incidents SET data = '[1, 2]'"),
    "incident data recursion bomb": sql_args("UPDATE incidents SET data = ?", BOMB),
    "incident data without kinds": sql("UPDATE incidents SET data = json_remove(data, '$.kinds')"),
    "incident kinds numbers": sql("UPDATE incidents SET data = "
                                  "json_set(data, '$.kinds', json('[1, 2]'))"),
    "incident peak text": sql("UPDATE incidents SET data = "
                              "json_set(data, '$.peak', json('{\"loss\": \"high\"}'))"),
    "incident members short": sql("UPDATE incidents SET data = "
                                  "json_set(data, '$.members', json('[[\"spike\"]]'))"),
    "incident onsets text": sql("UPDATE incidents SET data = "
                                "json_set(data, '$.onsets', json('{\"spike\": \"x\"}'))"),
    "incident peak huge": sql("UPDATE incidents SET data = "
                              "json_set(data, '$.peak', json('{\"loss\": 1e308}'))"),
    "incident severity unknown": sql("UPDATE incidents SET severity = 'fatal'"),
    "incident onset text": then(loose("incidents", INCIDENT_COLS),
                                sql("UPDATE incidents SET onset = 'soon'")),
    "incident message a blob": then(loose("incidents", INCIDENT_COLS),
                                    sql("UPDATE incidents SET message = x'00ff'")),
    # layer statistics
    "blob too short": stat_blob("weight_grad_norm", b"\x00" * 7),
    "blob empty": stat_blob("grad_rms", b""),
    "blob text": stat_blob("weight_grad_norm", "not a blob"),
    "blob null": then(loose("layer_stats", "stat_id, step, layout_id, value"),
                      stat_blob("grad_rms", None)),
    "unknown layout id": sql("UPDATE layer_stats SET layout_id = 999"),
    "layout not json": sql("UPDATE layouts SET layer_ids = 'x' || layer_ids"),
    "layout a dict": sql("UPDATE layouts SET layer_ids = '{\"a\": ' || layout_id || '}'"),
    "layout unknown layer": sql("UPDATE layouts SET layer_ids = '[999' || layout_id || ']'"),
    "layout recursion bomb": sql_args("UPDATE layouts SET layer_ids = ? || layout_id", BOMB),
    "layer name null": then(loose("layers", "layer_id INTEGER PRIMARY KEY, name"),
                            sql("UPDATE layers SET name = NULL WHERE layer_id = 1")),
    "stat name a number": then(loose("stats", "stat_id INTEGER PRIMARY KEY, name"),
                               sql("UPDATE stats SET name = 42 WHERE stat_id = 1")),
    "layer stat step text": then(loose("layer_stats", "stat_id, step, layout_id, value"),
                                 sql("UPDATE layer_stats SET step = 'x'")),
    "gradient stats 1e308": every_value("weight_grad_norm", HUGE),
    "gradient stats 1e300 and 1e-300": then(every_value("weight_grad_norm", 1e300),
                                            every_value("grad_rms", 1e-300)),
    "gradient stats -1e308": every_value("grad_rms", -HUGE),
    "gradient stats inf": every_value("grad_rms", float("inf")),
    "gradient stats nan": every_value("weight_grad_norm", float("nan")),
    "quantiles +-1e308": then(every_value("out_q02", -HUGE), every_value("out_q98", HUGE)),
    "quantiles 1e290": every_value("out_q50", 1e290),
}


def check(path: Path, out: Path, capsys) -> str:
    """Load and report ``path``; return what happened ("ok" or "refused")."""
    try:
        run = gh.load(path)
    except StoreError as err:
        assert str(err) and "\n" not in str(err).strip()
        loaded = False
    else:
        for stat in run.stats:
            try:
                run.layer_stat(stat)
            except StoreError:
                pass
        loaded = True
    code = main(["report", str(path), "-o", str(out)])
    said = capsys.readouterr().out
    assert code in (0, 2) and "Traceback" not in said
    if code == 2:
        assert "gradhealth report:" in said and not out.exists()
        return "refused"
    assert loaded and out.exists()
    out.unlink()
    return "ok"


@pytest.mark.slow
def test_crafted_stores_load_or_say_they_are_damaged(real_store, tmp_path, capsys):
    assert len(CRAFTED) >= 40
    outcomes = {}
    for i, (case, craft) in enumerate(CRAFTED.items()):
        path = tmp_path / f"crafted{i}.db"
        shutil.copy(real_store, path)
        craft(path)
        outcomes[case] = check(path, tmp_path / f"crafted{i}.html", capsys)
    # a store whose only damage is extreme numbers still gets its report
    assert outcomes["global norm 1e308"] == "ok" and outcomes["quantiles +-1e308"] == "ok"
    assert outcomes["incident peak huge"] == "ok"
    assert outcomes["incident kinds numbers"] == outcomes["incident data a list"] == "refused"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(60))
def test_byte_flipped_stores_load_or_say_they_are_damaged(real_store, tmp_path, capsys, seed):
    rng = random.Random(seed)
    data = bytearray(real_store.read_bytes())
    for _ in range(rng.choice((1, 4, 16, 64))):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    path = tmp_path / "flipped.db"
    path.write_bytes(bytes(data))
    check(path, tmp_path / "flipped.html", capsys)


def test_extreme_numbers_are_left_out_of_a_figure_and_counted_on_it(real_store, tmp_path, capsys,
                                                                    monkeypatch):
    from matplotlib.axes import Axes

    from gradhealth.report.plots import figure

    path = tmp_path / "huge.db"
    shutil.copy(real_store, path)
    then(sql(f"UPDATE steps SET global_norm = {HUGE} WHERE step < 5"),
         every_value("weight_grad_norm", 1e300))(path)
    said, text = [], Axes.text
    monkeypatch.setattr(Axes, "text", lambda ax, x, y, s, *a, **k: (said.append(s),
                                                                  text(ax, x, y, s, *a, **k))[1])
    # a figure that broke would warn, and warnings are errors here
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    assert "5 norms beyond 1e-150..1e+150 not drawn" in said
    assert any(s.endswith("values beyond 1e-150..1e+150 not drawn") for s in said)
    assert figure.beyond([HUGE, 1.0, -HUGE, float("inf")]) == 2
    assert figure.beyond([1e-200, 1.0, 0.0, -1.0], log=True) == 1
    capsys.readouterr()


def test_a_figure_that_cannot_be_drawn_becomes_a_note_not_a_crash():
    from gradhealth.errors import GradHealthWarning
    from gradhealth.report.plots import heatmap_png

    with pytest.warns(GradHealthWarning, match="heatmap_png could not draw"):
        png = heatmap_png([0, 1], ["a"], np.zeros(5))  # 5 values for 2 steps x 1 layer
    assert png.startswith(b"\x89PNG")
