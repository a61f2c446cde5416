"""The run file format, shared by the writer (``store.RunStore``) and reader (``runs.load``).

One SQLite file per run. This module holds the schema, the identity and version check,
the JSON encoding of metadata, and the encoding of per-step rows (``encode_steps``).

Schema (``SCHEMA_VERSION`` 2; ``PRAGMA user_version`` holds the version and
``PRAGMA application_id`` = ``APPLICATION_ID`` marks the file as ours):

- ``meta(key, value)``: run metadata, values are JSON text (model summary, config,
  ``environment()``).
- ``steps``: one row per optimizer step (columns in ``STEP_COLUMNS``).
- ``layers``, ``stats``, ``layouts``: integer ids for layer names, statistic names and
  the ordered list of layers a flush covered.
- ``layer_stats(stat_id, step, layout_id, value)``: one row per (statistic, step); ``value``
  is a little-endian float64 vector, one entry per layer of the layout. Why not a long
  table (step, layer, stat, value): a flush of 50 steps x 200 layers x 6 stats is 60,000
  rows there (~250 ms to insert, measured) against 300 rows here (~1 ms); a heatmap is
  one range scan of the primary key; NaN and inf stay bit-exact.
- ``findings``, ``skipped``: event logs.
- ``incidents`` (version 2 on): one row per incident (``rules.incident.Incident``),
  replaced as it grows; ``data`` is the rest of ``Incident.to_dict()`` as JSON. A
  version-1 store has no such table: the reader rebuilds its incidents from its findings
  and losses, and ``RunStore.open`` adds the table when it appends to one.

Non-finite numbers: SQLite stores +-inf in a REAL column but turns NaN into NULL. In
``steps`` each nullable REAL column (``FLOAT_COLUMNS``) has a bit in ``nan_mask``: NULL
with the bit set is NaN, NULL without it is "not recorded". Layer statistics are raw
float64 and need no flag. Finding evidence follows ``Finding.to_dict()``: non-finite
numbers are the strings ``"nan"``, ``"inf"``, ``"-inf"``.

Durability: the file is in WAL mode with ``synchronous=NORMAL``. A committed flush
survives the process being killed (SIGKILL, OOM killer): the data is in the WAL file in
the OS cache. It is not guaranteed to survive power loss or an OS crash; pass
``RunStore.create(..., durable=True)`` (``synchronous=FULL``, an fsync per flush) for that.
"""

from __future__ import annotations

import json
import platform
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth._version import __version__
from gradhealth.errors import StoreError, describe
from gradhealth.measure.layer import jsonable


def says(error: BaseException, limit: int = 300) -> str:
    """"SQLite says ..." with its message on one line and of bounded length (a damaged
    schema's message quotes the table's SQL, newlines and all)."""
    text = " ".join(str(error).split())
    return "SQLite says " + (text if len(text) <= limit else text[: limit - 3] + "...")

SCHEMA_VERSION = 2
APPLICATION_ID = 0x47485354  # ASCII "GHST": identifies a gradhealth run store
FLOAT_COLUMNS = ("loss", "global_norm", "update_ratio", "lr", "clip_pre_norm")
STEP_COLUMNS = ("step", "loss", "global_norm", "update_ratio", "lr", "nonfinite", "skipped",
                "clip_pre_norm", "clipped", "wall_time")

SCHEMA_SQL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE steps (
    step INTEGER PRIMARY KEY,
    loss REAL, global_norm REAL, update_ratio REAL, lr REAL,
    nonfinite INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    clip_pre_norm REAL,
    clipped INTEGER,
    wall_time REAL NOT NULL,
    nan_mask INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE layers (layer_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE stats (stat_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE layouts (layout_id INTEGER PRIMARY KEY, layer_ids TEXT NOT NULL UNIQUE);
CREATE TABLE layer_stats (
    stat_id INTEGER NOT NULL REFERENCES stats,
    step INTEGER NOT NULL,
    layout_id INTEGER NOT NULL REFERENCES layouts,
    value BLOB NOT NULL,
    PRIMARY KEY (stat_id, step)
);
CREATE TABLE findings (
    finding_id INTEGER PRIMARY KEY, step INTEGER, kind TEXT NOT NULL, module TEXT NOT NULL,
    severity TEXT NOT NULL, evidence TEXT NOT NULL, remedy TEXT NOT NULL,
    message TEXT NOT NULL, modules TEXT NOT NULL
);
CREATE TABLE skipped (skip_id INTEGER PRIMARY KEY, step INTEGER NOT NULL,
                      reason TEXT NOT NULL, module TEXT);
"""
INCIDENTS_SQL = """
CREATE TABLE incidents (
    incident_id INTEGER PRIMARY KEY, onset INTEGER NOT NULL, end_step INTEGER NOT NULL,
    kind TEXT NOT NULL, module TEXT NOT NULL, severity TEXT NOT NULL, outcome TEXT NOT NULL,
    message TEXT NOT NULL, remedy TEXT NOT NULL, data TEXT NOT NULL
)"""
INCIDENT_COLUMNS = ("number", "onset", "end", "kind", "module", "severity", "outcome",
                    "message", "remedy")
"""The incident fields with a column of their own (in the columns' order); the rest of
``Incident.to_dict()`` is the ``data`` JSON."""


def environment() -> dict[str, Any]:
    """Versions and platform of the process writing a run: python, gradhealth, torch, numpy."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "gradhealth": __version__,
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    try:
        import torch
    except ImportError:  # the store itself does not need torch
        env["torch"] = None
    else:
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
    return env


def to_json(value: Any) -> str:
    """Strict JSON text; numpy values become Python ones, non-finite floats become strings."""
    return json.dumps(jsonable(_plain(value)), allow_nan=False, sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def is_run_store(path: Path) -> bool:
    """Whether ``path`` is a gradhealth run store, from its header alone (the SQLite magic
    string and our ``application_id``, a big-endian int at byte 68); never opens it."""
    try:
        with open(path, "rb") as f:
            header = f.read(72)
    except OSError:
        return False
    return (len(header) == 72 and header[:16] == b"SQLite format 3\x00"
            and int.from_bytes(header[68:72], "big") == APPLICATION_ID)


def identify(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of an open store; StoreError if it is not one we can read."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and "unable to open" in str(e):
            raise StoreError(f"cannot open {path}: {says(e)}. Check that the file, its "
                             f"folder and any {path.name}-wal / {path.name}-shm next to it can "
                             "be read.") from e
        if is_run_store(path):  # our header: a store, damaged past its first bytes
            raise StoreError(f"{path} is a damaged gradhealth run store: {says(e)}. It "
                             "was cut short, changed outside gradhealth or is corrupt; restore "
                             "it from a copy, or record the run again.") from e
        raise StoreError(f"{path} is not a gradhealth run store: {says(e)}. Expected a "
                         "file written by gradhealth's RunStore (gh.watch); check the path.") from e
    if app_id != APPLICATION_ID:
        if app_id == 0 and _empty(path):
            raise StoreError(f"{path} is an empty file (0 bytes), not a gradhealth run store. "
                             "Give the path of a file written by gradhealth's RunStore "
                             "(gh.watch).")
        raise StoreError(f"{path} is not a gradhealth run store: expected an SQLite file with "
                         f"application_id {APPLICATION_ID:#x}, got {app_id:#x}. Give the path of "
                         "a file written by gradhealth's RunStore (gh.watch).")
    if version < 1:
        # a store's identity and version are written in the transaction that makes its
        # schema: our application_id with version 0 was never finished, or was edited
        raise StoreError(f"{path} is an unfinished gradhealth run store: it carries "
                         f"gradhealth's application_id but schema version {version}, which no "
                         "gradhealth writes (its creation never completed, or the file was "
                         "changed outside gradhealth). It holds no run to read; record the run "
                         "again to a new path.")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has run-store schema version {version}, newer than the "
                         f"version {SCHEMA_VERSION} this gradhealth understands; upgrade "
                         "gradhealth (pip install -U gradhealth) to read it.")
    return version


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def initialise(conn: sqlite3.Connection, meta_rows: Sequence[tuple[str, str]]) -> None:
    """Write the schema, the metadata rows and the file's identity, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA_SQL.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(INCIDENTS_SQL)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta_rows)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def upgrade(conn: sqlite3.Connection, version: int, path: Path) -> None:
    """Bring an open version-``version`` store to ``SCHEMA_VERSION`` in one transaction
    (version 1: add the incidents table), so that a resumed run can append to it."""
    if version >= SCHEMA_VERSION:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INCIDENTS_SQL)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"cannot upgrade {path} to run-store schema version {SCHEMA_VERSION} "
                         f"to append to it: {says(e)}. Start a new run store.") from e


INT_COLUMNS = ("nonfinite", "skipped", "clipped")
STEP_NAMES = (*STEP_COLUMNS, "nan_mask")
_FLOAT_AT = [STEP_NAMES.index(name) for name in FLOAT_COLUMNS]
_INT_AT = [STEP_NAMES.index(name) for name in INT_COLUMNS]
_BITS = 1 << np.arange(len(FLOAT_COLUMNS), dtype=np.int64)  # a FLOAT_COLUMNS name's nan_mask bit
_NULL = np.array(None, dtype=object)
STEPS_INTO = f"steps ({', '.join(STEP_NAMES)})"  # an INSERT's target, in the rows' order


def encode_steps(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The ``steps`` rows (``step_table``) of columns or per-step dicts, checked and
    normalised (``RunStore.write_steps``)."""
    columns = _columns(rows)
    unknown = sorted(set(columns) - set(STEP_COLUMNS))
    if unknown:
        raise StoreError(f"write_steps got unknown column(s) {unknown}; expected names "
                         f"from {list(STEP_COLUMNS)}.")
    if "step" not in columns:
        raise StoreError(f"write_steps needs a 'step' column; got {sorted(columns)}.")
    lengths = {k: len(_seq(v)) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise StoreError(f"write_steps: columns must have equal lengths; got {lengths}.")
    n = lengths["step"]
    steps = as_steps(columns["step"], "step")
    floats = np.empty((len(FLOAT_COLUMNS), n))
    given = np.empty((len(FLOAT_COLUMNS), n), dtype=bool)
    try:
        for k, name in enumerate(FLOAT_COLUMNS):
            floats[k], missing = _floats(columns.get(name), n)
            given[k] = ~missing
        ints = []
        for name in INT_COLUMNS:
            default = None if name == "clipped" else 0  # clipped NULL: no clipper ran
            col = _seq(columns[name]) if name in columns else [None] * n
            ints.append([default if v is None or v != v else int(v) for v in col])
        wall, _ = _floats(columns.get("wall_time"), n)  # missing: NaN
    except (TypeError, ValueError) as e:
        raise StoreError(f"write_steps: columns must hold numbers or None; {e}.") from e
    return step_table(steps, floats, given, ints, wall)


def step_table(steps: np.ndarray, floats: np.ndarray, given: np.ndarray,
               ints: Sequence[Sequence[int | None]], wall_time: np.ndarray) -> np.ndarray:
    """The ``steps`` table: one row per step, its values in ``STEP_NAMES`` order (Python
    numbers and None, in an object array), from columns already checked: ``steps``
    (int64); ``floats``, one float64 row per name of ``FLOAT_COLUMNS``, and ``given``,
    where each was recorded (elsewhere NULL; NaN where given: NULL with its ``nan_mask``
    bit); ``ints``, one list of ints or None per name of ``INT_COLUMNS``; ``wall_time``
    (NaN: now).

    ``encode_steps`` checks a caller's columns into this form; a watch builds its own so
    (``training.rows``). The table is made by array operations, with no Python loop over
    the rows of a flush window."""
    nan = np.isnan(floats)
    table = np.empty((len(STEP_NAMES), len(steps)), dtype=object)
    table[0] = steps
    # SQLite would store NaN as NULL anyway; the bit keeps it
    table[_FLOAT_AT] = np.where(nan | ~given, _NULL, floats)
    table[_INT_AT] = ints
    table[-2] = np.where(np.isnan(wall_time), time.time(), wall_time)
    table[-1] = _BITS @ (nan & given)
    return table.T


def _columns(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(rows, Mapping):
        return dict(rows)
    if isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
        names = dict.fromkeys(k for r in rows for k in r)
        return {k: [r.get(k) for r in rows] for k in names}
    raise StoreError("write_steps expects a mapping of columns or a list of dicts; "
                     f"got {describe(rows)}.")


def _seq(col: Any) -> list:
    """A column as a list: 1-D arrays, lists, tuples (a scalar or 2-D array is an error)."""
    if isinstance(col, np.ndarray):
        if col.ndim != 1:
            raise StoreError(f"write_steps: columns must be 1-D; got {describe(col)}.")
        return col.tolist()
    if isinstance(col, (str, bytes)) or not isinstance(col, Iterable):
        raise StoreError(f"write_steps: columns must be sequences; got {describe(col)}.")
    return list(col)


def as_steps(col: Any, name: str) -> np.ndarray:
    arr = np.asarray(col)
    whole = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
    if arr.ndim != 1 or not whole:
        raise StoreError(f"{name} must be a 1-D sequence of integer steps; got {describe(col)}.")
    return arr.astype(np.int64)


def _floats(col: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, missing): ``None`` entries are missing, NaN entries are NaN."""
    if col is None:
        return np.full(n, np.nan), np.ones(n, dtype=bool)
    if isinstance(col, np.ndarray) and col.dtype.kind in "biuf":
        return col.astype(np.float64), np.zeros(n, dtype=bool)
    items = _seq(col)
    missing = np.array([v is None for v in items], dtype=bool)
    return np.array([np.nan if v is None else v for v in items], dtype=np.float64), missing
