"""The host work of a flush window (training/journal.py, training/rows.py): a journal fed
windows as arrays against the per-step reading of the same steps, and the store it
writes against the values each step should have, field by field."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from torch import nn

from gradhealth.measure.params import ParamLayout
from gradhealth.rules import amp as amp_rule
from gradhealth.rules import spike as spike_rule
from gradhealth.rules.divergence import Trend
from gradhealth.rules.tracker import Tracker
from gradhealth.store.format import FLOAT_COLUMNS
from gradhealth.store.writer import RunStore
from gradhealth.training.journal import Journal, StepNote

SCALARS = ("loss", "clip_pre_norm", "clipped", "amp_scale", "lr")


def layout() -> ParamLayout:
    """Five linear layers: ten parameter tensors."""
    return ParamLayout.of(nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)]))


def windows(seed: int, count: int, params: int) -> list[tuple[list[StepNote], dict, int]]:
    """Flush windows as the recorder hands them over (strided float64 views of one buffer,
    NaN where nothing was written), with what a run meets: guard and GradScaler skips,
    losses not logged or not finite, non-finite and spiking norms, clipping, learning
    rates given, held as tensors or NaN, measured updates, gaps between steps."""
    rng = np.random.default_rng(seed)
    step, out = 0, []
    for _ in range(count):
        n = int(rng.choice([0, 1, 7, 50, 50, 120, 200]))
        wide = np.full((n, 3 * params + len(SCALARS)), np.nan)
        grad, update, weight = (wide[:, k * params:(k + 1) * params] for k in range(3))
        col = {name: wide[:, 3 * params + j] for j, name in enumerate(SCALARS)}
        grad[:] = np.exp(rng.normal(0, 0.1, (n, params)))
        lr_kind, clips = int(rng.integers(3)), bool(rng.random() < 0.4)
        notes = []
        for i in range(n):
            step += int(rng.integers(2, 4)) if rng.random() < 0.01 else 0
            r = rng.random()
            skipped = "guard" if r < 0.02 else "amp" if r < 0.05 else None
            logged, upd = bool(rng.random() > 0.1), bool(rng.random() < 0.05)
            lr = (0.01, None, math.nan if rng.random() < 0.2 else 0.02)[lr_kind]
            notes.append(StepNote(step, 1.7e9 + step / 1000, lr, skipped, logged, clips, upd))
            loss = 2.3 * math.exp(-step / 2000) * rng.lognormal(0, 0.05)
            loss *= 8.0 if 1500 < step < 1800 else 1.0  # the loss leaves its level
            r = rng.random()
            if r < 0.01:
                grad[i, rng.integers(params)] *= 100
            elif r < 0.015:
                grad[i, rng.integers(params)] = (math.nan, math.inf)[int(rng.integers(2))]
            elif r < 0.02:
                loss *= 20
            elif r < 0.03:
                loss = (math.nan, math.inf)[int(rng.integers(2))]
            col["loss"][i] = loss if logged or rng.random() < 0.5 else 123.0  # not logged
            if lr_kind == 1 and rng.random() < 0.8:
                col["lr"][i] = 0.003
            if skipped == "amp":
                col["amp_scale"][i] = 2.0 ** -int(rng.integers(0, 30))
            if clips:
                col["clip_pre_norm"][i] = rng.random() * 5
                col["clipped"][i] = (0.0, 1.0, math.nan)[int(rng.integers(3))]
            if upd:
                update[i] = rng.random(params) * 1e-2 * (100 if rng.random() < 0.2 else 1)
                weight[i] = rng.random(params) * (rng.random() > 0.1)
            step += 1
        out.append((notes, {"grad": grad, "update": update, "weight": weight, **col}, n))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_journal_fed_windows_reads_each_step_as_the_step_by_step_rules_do(tmp_path, seed):
    lay = layout()
    store = RunStore.create(tmp_path / "run.db")
    journal = Journal(store, lay, spike_rule.Detector(), guarded=False)
    found: list[spike_rule.Spike] = []
    keep = journal.spikes
    journal.spikes = lambda spikes, skipped: (found.extend(spikes), keep(spikes, skipped))
    detector, trend, tracker = spike_rule.Detector(), Trend(), Tracker()
    expected_spikes, divergences, rows, blobs, ratios = [], [], [], [], []
    bad_steps, amp_diverged = [], []
    counts = dict.fromkeys(("steps", "skipped", "amp_skipped", "nonfinite_steps"), 0)
    for notes, drained, n in windows(seed, 40, len(lay)):
        for note in notes:
            journal.note(note)
        journal.flush(drained, n, lay)
        grad, lr_tensor = drained["grad"], drained["lr"]
        norms = np.sqrt(np.sum(np.square(grad), axis=1))
        per_module = lay.per_module(grad)
        for i, s in enumerate(notes):  # the reference: one step at a time
            norm, loss = float(norms[i]), float(drained["loss"][i])
            amp, bad = s.skipped == "amp", not math.isfinite(norm)
            logged = loss if s.loss_logged else None
            if not amp:
                expected_spikes += detector.observe(s.step, {"global_norm": norm, "loss": logged})
            divergences += trend.observe([s.step], [logged])
            tracker.observe([s.step], [logged])
            counts["steps"] += 1
            counts["skipped"] += s.skipped == "guard"
            counts["amp_skipped"] += amp
            counts["nonfinite_steps"] += bad and not amp
            bad_steps += [s.step] if bad and not amp else []
            amp_diverged += [s.step] if amp and amp_rule.diverged(drained["amp_scale"][i]) else []
            ratio = None
            if s.update:
                u, w = drained["update"][i], drained["weight"][i]
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = float(np.sqrt(np.sum(u * u)) / np.sqrt(np.sum(w * w)))
                    ratios.append((s.step, lay.per_module(u) / lay.per_module(w),
                                   lay.per_module(w)))
            lr = s.lr if s.lr is not None else float(lr_tensor[i])
            lr_given = s.lr is not None or not math.isnan(lr)
            clip = float(drained["clip_pre_norm"][i]) if s.clipped else None
            flag = float(drained["clipped"][i])
            values = {"loss": logged, "global_norm": norm, "update_ratio": ratio,
                      "lr": lr if lr_given else None, "clip_pre_norm": clip}
            mask = sum(1 << b for b, c in enumerate(FLOAT_COLUMNS)
                       if values[c] is not None and math.isnan(values[c]))
            cells = {c: None if v is None or math.isnan(v) else v for c, v in values.items()}
            rows.append((s.step, cells["loss"], cells["global_norm"], cells["update_ratio"],
                         cells["lr"], int(bad), int(s.skipped is not None),
                         cells["clip_pre_norm"], int(flag) if s.clipped and flag == flag
                         else None, s.wall_time, mask))
            blobs.append((s.step, per_module[i].astype("<f8").tobytes()))
    journal.finish()
    store.close()
    key = lambda s: (s.step, s.series)  # noqa: E731
    assert sorted(found, key=key) == sorted(expected_spikes, key=key) and found
    assert detector.states == journal.detector.states
    assert journal.trend == trend and divergences
    assert [f for f in journal.findings if f.kind == "divergence"] == divergences
    assert list(journal.tracker._history) == list(tracker._history)
    assert journal.tracker.last == tracker.last and journal.tracker.initial == tracker.initial
    assert {k: journal.counts[k] for k in counts} == counts
    nonfinite = [f.evidence["step"] for f in journal.findings if f.kind == "nonfinite"]
    assert sorted(nonfinite) == sorted([bad_steps[0], amp_diverged[0]])  # once per run each
    with sqlite3.connect(tmp_path / "run.db") as conn:
        assert conn.execute("SELECT * FROM steps ORDER BY step").fetchall() == sorted(rows)
        stats = dict(conn.execute("SELECT name, stat_id FROM stats"))
        stored = conn.execute("SELECT step, value FROM layer_stats WHERE stat_id = ? "
                              "ORDER BY step", (stats["weight_grad_norm"],)).fetchall()
        assert stored == sorted(blobs)
        for name, k in (("update_ratio", 0), ("weight_norm", 1)):
            stored = conn.execute("SELECT step, value FROM layer_stats WHERE stat_id = ? "
                                  "ORDER BY step", (stats[name],)).fetchall()
            assert stored == [(s, r[k].astype("<f8").tobytes()) for s, *r in sorted(
                ratios, key=lambda r: r[0])]
