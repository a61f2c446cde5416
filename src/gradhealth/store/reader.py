"""The run store's reader: ``load(path) -> Run``.

Reading is safe on files from anywhere: the file is opened read-only, text is parsed as
JSON and numbers with ``numpy.frombuffer``; nothing is unpickled, evaluated or executed.
A store can be read while its writer is still running: WAL mode lets a reader see every
flush committed before ``load`` was called. The file format is described in
``gradhealth.store.format``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth.errors import StoreError
from gradhealth.rules.finding import Finding, from_record
from gradhealth.store.format import FLOAT_COLUMNS, STEP_COLUMNS, identify


class Table:
    """Named numpy columns of equal length: ``table["loss"]``, ``table.columns``.

    Float columns hold NaN both where the value was NaN and where it was not recorded;
    ``missing(name)`` tells the two apart. ``clipped`` is float 1.0 / 0.0 / NaN (no
    clipper), so ``np.nanmean(table["clipped"])`` is how often clipping bound.
    """

    def __init__(self, data: dict[str, np.ndarray], missing: dict[str, np.ndarray] | None = None):
        self._data = data
        self._missing = missing or {}

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._data)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns are {list(self._data)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(next(iter(self._data.values()))) if self._data else 0

    def missing(self, name: str) -> np.ndarray:
        """Boolean mask of the rows where ``name`` was not recorded (as opposed to NaN)."""
        column = self[name]
        return self._missing.get(name, np.zeros(len(column), dtype=bool))

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self._data)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of the columns; needs pandas, which gradhealth does not."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("Table.to_pandas() needs pandas (pip install pandas); without it "
                              "use table[name] or table.to_dict(), which are numpy arrays.") from e
        return pd.DataFrame(self._data)

    def __repr__(self) -> str:
        return f"Table(rows={len(self)}, columns={list(self._data)})"


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
    findings), ``skipped``, and the names of the recorded ``layers`` and ``stats`` are
    read at once; ``layer_stat`` reads one statistic from the file when called.
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

    def layer_stat(self, stat: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``(steps, layer_names, values)`` with ``values[i, j]`` = ``stat`` of layer ``j`` at
        ``steps[i]`` (NaN where a layer was not recorded at that step): a heatmap.

        Reads the file when called, so a live run may show steps newer than ``self.steps``.
        """
        with _reading(self.path) as conn:
            row = conn.execute("SELECT stat_id FROM stats WHERE name = ?", (stat,)).fetchone()
            if row is None:
                recorded = [n for (n,) in conn.execute("SELECT name FROM stats ORDER BY stat_id")]
                raise StoreError(f"no layer statistic {stat!r} in {self.path}; "
                                 f"recorded: {recorded}.")
            names = dict(conn.execute("SELECT layer_id, name FROM layers"))
            layouts = {i: json.loads(ids) for i, ids in
                       conn.execute("SELECT layout_id, layer_ids FROM layouts")}
            rows = conn.execute("SELECT step, layout_id, value FROM layer_stats WHERE stat_id = ? "
                                "ORDER BY step", (row[0],)).fetchall()
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        row_layout = np.array([r[1] for r in rows], dtype=np.int64)
        used = sorted(set(row_layout.tolist()))
        layer_ids = sorted({i for lid in used for i in layouts[lid]})
        position = {lid: j for j, lid in enumerate(layer_ids)}
        values = np.full((len(rows), len(layer_ids)), np.nan)
        for lid in used:
            at = np.flatnonzero(row_layout == lid)
            cols = [position[i] for i in layouts[lid]]
            blob = b"".join(rows[i][2] for i in at)
            if len(blob) != 8 * len(at) * len(cols):
                raise StoreError(f"{self.path} is damaged: layer statistic {stat!r} has values "
                                 "of the wrong length (changed outside gradhealth, or corrupt).")
            block = np.frombuffer(blob, dtype="<f8").reshape(len(at), len(cols))
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
    with _reading(path) as conn:
        version = identify(conn, path)
        meta = {k: json.loads(v) for k, v in
                conn.execute("SELECT key, value FROM meta ORDER BY key")}
        steps = _steps(conn.execute(f"SELECT {', '.join(STEP_COLUMNS)}, nan_mask FROM steps "
                                    "WHERE step > ? ORDER BY step",
                                    (-(2**63) if after is None else int(after),)).fetchall())
        finding_rows = conn.execute("SELECT step, kind, module, severity, evidence, remedy, "
                                    "message, modules FROM findings ORDER BY finding_id").fetchall()
        skipped = [SkippedStep(*r) for r in conn.execute(
            "SELECT step, reason, module FROM skipped ORDER BY skip_id")]
        layers = [n for (n,) in conn.execute("SELECT name FROM layers ORDER BY layer_id")]
        stats = [n for (n,) in conn.execute("SELECT name FROM stats ORDER BY stat_id")]
    findings = [from_record(kind, module, severity, json.loads(evidence), remedy, message,
                            json.loads(modules))
                for _, kind, module, severity, evidence, remedy, message, modules in finding_rows]
    return Run(path=path, schema_version=version, meta=meta, steps=steps, findings=findings,
               finding_steps=[r[0] for r in finding_rows], skipped=skipped, layers=layers,
               stats=stats)


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction (one consistent snapshot)."""
    if not path.exists():
        raise StoreError(f"no run store at {path}: expected a file written by gradhealth "
                         "(RunStore / gh.watch); check the path.")
    if not path.is_file():
        raise StoreError(f"{path} is not a file; give the path of a gradhealth run store.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} for reading: SQLite says {e!s}.") from e
    try:
        identify(conn, path)
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot read the run store {path}: SQLite says {e!s}.") from e
    finally:
        conn.close()


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
