"""The run store's reader: ``load(path) -> Run``.

Reading is safe on files from anywhere: the file is opened read-only, text is parsed as
JSON and numbers with ``numpy.frombuffer``; nothing is unpickled, evaluated or executed,
and every value is checked before it is used (``decode``: a damaged or crafted store is a
``StoreError`` naming the table, row and key). On read-only media a store whose WAL lacks
its index is read through a private copy (``access``).
A store can be read while its writer is still running: WAL mode lets a reader see every
flush committed before ``load`` was called. The file format is described in
``gradhealth.store.format``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth.errors import StoreError
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import Incident
from gradhealth.rules.tracker import Tracker
from gradhealth.store import decode
from gradhealth.store.access import Source
from gradhealth.store.format import FLOAT_COLUMNS, STEP_COLUMNS
from gradhealth.store.table import Table

__all__ = ["Run", "SkippedStep", "Table", "load"]


@dataclass(frozen=True)
class SkippedStep:
    """A step whose update was withheld, why, and the module blamed (if any)."""

    step: int
    reason: str
    module: str | None


@dataclass(eq=False)
class Run:
    """One stored run, as read by ``load``: a snapshot of what was committed then.

    ``meta``, ``steps``, ``findings`` (with ``finding_steps``, ``None`` for pre-flight
    findings), ``skipped``, the names of the recorded ``layers`` and ``stats``, and the
    ``incidents`` in order of onset (rebuilt from the findings and losses for a
    version-1 store, which has none stored) are read at once; ``layer_stat`` reads one
    statistic from the file when called.
    Non-finite numbers in finding evidence come back as strings, as in
    ``Finding.to_dict()``.
    """

    path: Path
    schema_version: int
    meta: dict[str, Any]
    steps: Table
    findings: list[Finding]
    finding_steps: list[int | None]
    skipped: list[SkippedStep]
    layers: list[str]
    stats: list[str]
    incidents: list[Incident] = field(default_factory=list)
    _source: Source | None = field(default=None, repr=False, compare=False)

    def layer_stat(self, stat: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``(steps, layer_names, values)`` with ``values[i, j]`` = ``stat`` of layer ``j`` at
        ``steps[i]`` (NaN where a layer was not recorded at that step): a heatmap.

        Reads the file when called, so a live run may show steps newer than ``self.steps``.
        """
        source = self._source or Source(self.path)
        with source.reading() as (conn, _):
            row = conn.execute("SELECT stat_id FROM stats WHERE name = ?", (stat,)).fetchone()
            if row is None:
                recorded = [n for (n,) in conn.execute("SELECT name FROM stats ORDER BY stat_id")]
                raise StoreError(f"no layer statistic {stat!r} in {self.path}; "
                                 f"recorded: {recorded}.")
            names = decode.names(self.path, "layers",
                                 conn.execute("SELECT layer_id, name FROM layers").fetchall())
            layouts = decode.layouts(self.path, conn.execute(
                "SELECT layout_id, layer_ids FROM layouts").fetchall(), names)
            rows = conn.execute("SELECT step, layout_id, value FROM layer_stats WHERE stat_id = ? "
                                "ORDER BY step", (row[0],)).fetchall()
        decode.check_layer_rows(self.path, stat, rows, layouts)
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        row_layout = np.array([r[1] for r in rows], dtype=np.int64)
        used = sorted(set(row_layout.tolist()))
        layer_ids = sorted({i for lid in used for i in layouts[lid]})
        position = {lid: j for j, lid in enumerate(layer_ids)}
        values = np.full((len(rows), len(layer_ids)), np.nan)
        for lid in used:
            at = np.flatnonzero(row_layout == lid)
            cols = [position[i] for i in layouts[lid]]
            block = decode.floats([rows[i] for i in at], len(cols))
            if len(used) == 1 and cols == list(range(len(cols))):
                values = block.astype(np.float64)
            else:
                values[np.ix_(at, np.asarray(cols, dtype=np.intp))] = block
        return steps, [names[i] for i in layer_ids], values

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, steps={len(self.steps)}, layers={len(self.layers)}, "
                f"stats={self.stats}, findings={len(self.findings)}, skipped={len(self.skipped)})")


def load(path: str | os.PathLike, *, after: int | None = None) -> Run:
    """Read the run store at ``path`` (read-only; JSON and raw floats only, no pickle).

    Works while a writer is still writing: the result holds every flush committed before
    the call. ``after``: only the steps after this one go into ``Run.steps`` (a live view
    reads what is new). Raises ``StoreError`` for a missing file, a file that is not a
    gradhealth run store, or one written by a newer gradhealth (schema version newer than
    this one's).
    """
    path = Path(path)
    source = Source(path)
    with source.reading() as (conn, version):
        meta = decode.meta(path, conn.execute("SELECT key, value FROM meta ORDER BY key")
                           .fetchall())
        decode.check_steps(path, conn)
        steps = _steps(conn.execute(f"SELECT {', '.join(STEP_COLUMNS)}, nan_mask FROM steps "
                                    "WHERE step > ? ORDER BY step",
                                    (-(2**63) if after is None else int(after),)).fetchall())
        findings, finding_steps = decode.findings(path, conn.execute(
            "SELECT finding_id, step, kind, module, severity, evidence, remedy, message, "
            "modules FROM findings ORDER BY finding_id").fetchall())
        skipped = [SkippedStep(*r) for r in decode.skipped(path, conn.execute(
            "SELECT skip_id, step, reason, module FROM skipped ORDER BY skip_id").fetchall())]
        layers = decode.names(path, "layers", conn.execute(
            "SELECT layer_id, name FROM layers ORDER BY layer_id").fetchall())
        stats = decode.names(path, "stats", conn.execute(
            "SELECT stat_id, name FROM stats ORDER BY stat_id").fetchall())
        incidents = sorted(decode.incidents(path, conn.execute(
            "SELECT incident_id, onset, end_step, kind, module, severity, outcome, message, "
            "remedy, data FROM incidents ORDER BY incident_id").fetchall()),
            key=lambda i: (i.onset, i.number)) if version >= 2 else None
    if incidents is None:
        incidents = rebuilt(findings, finding_steps, steps)
    return Run(path=path, schema_version=version, meta=meta, steps=steps, findings=findings,
               finding_steps=finding_steps, skipped=skipped, layers=list(layers.values()),
               stats=list(stats.values()), incidents=incidents, _source=source)


def rebuilt(findings: list[Finding], steps_of: list[int | None], steps: Table
            ) -> list[Incident]:
    """The incidents of a store that has none stored (schema version 1), made as the watch
    makes them (``rules.tracker``) from its findings and its per-step losses."""
    tracker = Tracker()
    for f, step in zip(findings, steps_of):
        if step is not None:
            tracker.add(f, step, step)
    loss = np.where(steps.missing("loss"), np.nan, np.asarray(steps["loss"], dtype=np.float64))
    tracker.observe(np.asarray(steps["step"]).tolist(), loss.tolist())
    return tracker.incidents()


def _steps(rows: list[tuple]) -> Table:
    cols = list(zip(*rows)) if rows else [()] * (len(STEP_COLUMNS) + 1)
    raw = dict(zip((*STEP_COLUMNS, "nan_mask"), cols))
    nan_mask = np.array(raw["nan_mask"], dtype=np.int64)
    data: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for name in STEP_COLUMNS:
        if name in ("step", "nonfinite", "skipped"):
            data[name] = np.array(raw[name], dtype=np.int64)
        else:  # NULL -> NaN; for FLOAT_COLUMNS the nan_mask bit says it was a real NaN
            data[name] = np.array([np.nan if v is None else v for v in raw[name]], dtype=np.float64)
            was_nan = (nan_mask >> FLOAT_COLUMNS.index(name)) & 1 if name in FLOAT_COLUMNS else 0
            missing[name] = np.isnan(data[name]) & (was_nan == 0)
    return Table(data, missing)
