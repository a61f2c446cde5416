"""The run store's writer: ``RunStore`` writes one run, one flush window per transaction.

The file format (tables, NaN handling, durability) is described in ``gradhealth.store.format``;
read a store with ``gradhealth.load``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth.errors import StoreError, describe
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import Incident
from gradhealth.store.format import (
    INCIDENT_COLUMNS,
    STEPS_INTO,
    as_steps,
    encode_steps,
    environment,
    identify,
    initialise,
    says,
    to_json,
    upgrade,
)
from gradhealth.store.lock import WriterLock, ensure_writable, remove_store

__all__ = ["RunStore", "environment"]


class RunStore:
    """Writes one run to an SQLite file; each ``write_*`` call is one transaction, or all
    of them together inside ``batch()``.

    Use ``RunStore.create`` for a new run, ``RunStore.open`` to append to an existing one
    (a resumed run); writing a step that is already stored replaces it. While open, the
    store holds the writer's lock (``gradhealth.store.lock``): no other run can replace or
    append to it. Safe to share between threads (one lock). Read it with ``gradhealth.load``.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, lock: WriterLock):
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._writer = lock
        self._lock = threading.RLock()
        self._batch = False
        self._stale = True  # the name -> id cache needs (re)reading
        self._load_ids(conn)

    @classmethod
    def create(cls, path: str | os.PathLike, meta: Mapping[str, Any] | None = None, *,
               overwrite: bool = False, durable: bool = False) -> RunStore:
        """Create a new run store at ``path`` with ``meta`` (JSON-able values).

        Refuses an existing file unless ``overwrite=True``, and even then replaces only a
        gradhealth run store (or an empty file), never another kind of file. Record the
        environment with ``meta={"environment": environment(), ...}``.
        """
        path = Path(path)
        meta_rows = [(str(k), to_json(v)) for k, v in (meta or {}).items()]
        if path.is_dir():
            raise StoreError(f"{path} is a folder; a run store is one file: give a file path, "
                             f"such as {path / 'run.db'}")
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise StoreError(f"{path} already exists; pass overwrite=True to replace the run "
                                 "store there, or choose a new path.")
            remove_store(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create a run store at {path}: its folder cannot be made "
                             f"({e.strerror or e}); choose a path on a writable file "
                             f"system.") from e
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as e:
            raise StoreError(f"a run store appeared at {path} while creating it (another "
                             "process?); choose a new path.") from e
        except OSError as e:
            raise StoreError(f"cannot create a run store at {path}: {e.strerror or e}; choose "
                             f"a path on a writable file system with free space.") from e
        lock = WriterLock.acquire(path, fd)
        conn = None
        try:
            conn = _connect(path, durable)
            initialise(conn, meta_rows)
        except (sqlite3.Error, StoreError) as e:
            # nothing half-made is left behind: a retry must not find "already exists"
            if conn is not None:
                conn.close()
            lock.release()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot create a run store at {path}: {e}; choose a path on a "
                             f"writable file system with free space.") from e
        return cls(conn, path, lock)

    @classmethod
    def open(cls, path: str | os.PathLike, *, durable: bool = False) -> RunStore:
        """Open an existing run store to append to it (e.g. a resumed run)."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no run store at {path}; use RunStore.create to start one.")
        ensure_writable(path, "append to")  # else it opens, and each window fails later
        lock = WriterLock.acquire(path)
        try:
            conn = _connect(path, durable)
        except StoreError:
            lock.release()
            raise
        try:
            upgrade(conn, identify(conn, path), path)  # an older store gains the newer tables
        except StoreError:
            conn.close()
            lock.release()
            raise
        return cls(conn, path, lock)

    def write_steps(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
        """Write a flush window of per-step scalars in one transaction; returns the row count.

        ``rows`` is columnar (``{"step": array, "loss": array, ...}``, equal lengths) or a
        list of per-step dicts. ``step`` is required; a float column left out or ``None`` is
        "not recorded", NaN is kept as NaN; ``nonfinite``/``skipped`` default to 0,
        ``clipped`` to NULL (no clipper), ``wall_time`` to the time of this call.
        """
        table = encode_steps(rows)
        self.insert_steps(table)
        return len(table)

    def insert_steps(self, table: np.ndarray) -> None:
        """Write rows encoded by ``format.step_table``, as they are: the watch's path
        (``training.rows``), whose columns are built in the form that function takes, so
        there is nothing to check (``write_steps`` checks a caller's columns first)."""
        with self._transaction("write steps") as conn:
            _insert(conn, STEPS_INTO, table.shape[1], table.ravel().tolist())

    def write_layer_stats(self, steps: Any, layer_names: Sequence[str],
                          stat_names: Sequence[str], values: Any) -> None:
        """Write ``values[i, j, k]`` (stat k of layer j at ``steps[i]``) in one transaction."""
        step_arr = as_steps(steps, "steps")
        layer_names, stat_names = [str(n) for n in layer_names], [str(n) for n in stat_names]
        for what, names in (("layer_names", layer_names), ("stat_names", stat_names)):
            if len(set(names)) != len(names):
                raise StoreError(f"write_layer_stats: {what} has duplicates; expected unique "
                                 "names.")
        try:
            arr = np.asarray(values, dtype="<f8")
        except (TypeError, ValueError) as e:
            raise StoreError("write_layer_stats: values must be numeric; "
                             f"got {describe(values)}.") from e
        expected = (len(step_arr), len(layer_names), len(stat_names))
        if arr.shape != expected:
            raise StoreError(f"write_layer_stats: values must have shape (n_steps, n_layers, "
                             f"n_stats) = {expected}; got {arr.shape}.")
        step_list = step_arr.tolist()
        with self._transaction("write layer statistics") as conn:
            layer_ids = self._intern(conn, "layers", layer_names)
            stat_ids = self._intern(conn, "stats", stat_names)
            layout = self._layout(conn, tuple(layer_ids))
            rows = zip([sid for sid in stat_ids for _ in step_list], step_list * len(stat_ids),
                       repeat(layout), _blobs(arr))
            _insert(conn, "layer_stats", 4, list(chain.from_iterable(rows)))

    def write_findings(self, findings: Iterable[Finding], step: int | None) -> None:
        """Write findings (``step=None`` for a pre-flight probe) in one transaction."""
        rows = []
        for f in findings:
            d = f.to_dict()
            rows.append((step, d["kind"], d["module"], d["severity"], to_json(d["evidence"]),
                         d["remedy"], d["message"], to_json(d["modules"])))
        with self._transaction("write findings") as conn:
            conn.executemany("INSERT INTO findings (step, kind, module, severity, evidence, "
                             "remedy, message, modules) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_incidents(self, incidents: Iterable[Incident]) -> None:
        """Write incidents in one transaction, each replacing its earlier row (an incident
        grows while the run goes on: a longer course, what followed)."""
        rows = []
        for incident in incidents:
            d = incident.to_dict()
            columns = [d.pop(k) for k in INCIDENT_COLUMNS]
            rows.append((*columns, to_json(d)))
        with self._transaction("write incidents") as conn:
            conn.executemany("INSERT OR REPLACE INTO incidents (incident_id, onset, end_step, "
                             "kind, module, severity, outcome, message, remedy, data) VALUES "
                             "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def write_skipped(self, step: int, reason: str, module: str | None = None) -> None:
        """Record that ``step`` did not update the weights, why, and the module to blame."""
        with self._transaction("write a skipped step") as conn:
            conn.execute("INSERT INTO skipped (step, reason, module) VALUES (?, ?, ?)",
                         (int(step), str(reason), module))

    def set_meta(self, key: str, value: Any) -> None:
        """Set one metadata entry (JSON-able ``value``), replacing any earlier value."""
        text = to_json(value)
        with self._transaction("set metadata") as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (str(key), text))

    def close(self) -> None:
        """Close the file (idempotent); every completed ``write_*`` is already committed."""
        with self._lock:
            if self._conn is not None:
                try:  # a finished run needs no WAL: readers then leave no -wal/-shm behind
                    self._conn.execute("PRAGMA journal_mode=DELETE")
                except sqlite3.Error:
                    pass  # a reader holds it open: the WAL stays, and nothing is lost
                self._conn.close()
                self._conn = None
            self._writer.release()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}{', closed' if self.closed else ''})"

    @contextmanager
    def batch(self) -> Iterator[RunStore]:
        """Make every ``write_*`` inside the block one transaction: all of it is stored, or,
        if the block raises or the process dies in it, none of it (a watch writes each
        flush window so: its steps, layer statistics, findings and skipped steps)."""
        with self._transaction("write a flush window"):
            self._batch = True
            try:
                yield self
            finally:
                self._batch = False

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"cannot {what}: the run store {self.path} is closed; open it "
                                 "again with RunStore.open to append.")
            if self._batch:  # inside batch(): its transaction holds this write too
                yield conn
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                if self._stale:  # a rollback may have undone ids: read them again
                    self._load_ids(conn)
                try:
                    yield conn
                    conn.execute("COMMIT")  # a full disk may fail here too
                except BaseException:
                    self._stale = True
                    if conn.in_transaction:  # some errors (disk full) already rolled back
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"cannot {what} in {self.path}: {says(e)}.") from e

    def _load_ids(self, conn: sqlite3.Connection) -> None:
        """Cache the name -> id tables (again after a rollback undid new ids)."""
        self._stale = False
        self._ids: dict[str, dict[Any, int]] = {
            t: dict(conn.execute(f"SELECT name, {t[:-1]}_id FROM {t}")) for t in ("layers", "stats")
        }
        self._ids["layouts"] = {tuple(json.loads(ids)): i for i, ids in
                                conn.execute("SELECT layout_id, layer_ids FROM layouts")}

    def _intern(self, conn: sqlite3.Connection, table: str, names: list[str]) -> list[int]:
        ids = self._ids[table]
        for name in names:
            if name not in ids:
                cur = conn.execute(f"INSERT INTO {table} (name) VALUES (?)", (name,))
                ids[name] = _inserted_id(cur)
        return [ids[n] for n in names]

    def _layout(self, conn: sqlite3.Connection, layer_ids: tuple[int, ...]) -> int:
        layouts = self._ids["layouts"]
        if layer_ids not in layouts:
            cur = conn.execute("INSERT INTO layouts (layer_ids) VALUES (?)",
                               (json.dumps(list(layer_ids)),))
            layouts[layer_ids] = _inserted_id(cur)
        return layouts[layer_ids]


ROWS_PER_INSERT = 64
"""Rows one INSERT statement writes: SQLite runs a statement per 64 rows, not per row
(11 x 64 parameters, under the 999 an SQLite before 3.32 allows)."""


def _insert(conn: sqlite3.Connection, into: str, width: int, values: list[Any]) -> None:
    """INSERT OR REPLACE the rows of ``width`` values laid end to end in ``values``, in
    order, ``ROWS_PER_INSERT`` a statement (a multi-row VALUES list: the same rows, row
    ids and replacements as one INSERT per row)."""
    row = f"({', '.join('?' * width)})"
    size = ROWS_PER_INSERT * width
    for start in range(0, len(values), size):
        part = values[start:start + size]
        rows = ", ".join([row] * (len(part) // width))
        conn.execute(f"INSERT OR REPLACE INTO {into} VALUES {rows}", part)


def _blobs(values: np.ndarray) -> list[bytes]:
    """The layer vectors of (steps, layers, stats) ``values`` as bytes, stat by stat and
    step by step: one row of a (stat, step) x layers array viewed as one opaque item, so
    one ``tolist`` makes every blob."""
    by_stat = np.ascontiguousarray(values.transpose(2, 0, 1))  # (stat, step, layer)
    width = by_stat.shape[2] * by_stat.itemsize
    if not width:
        return [b""] * (by_stat.shape[0] * by_stat.shape[1])
    return by_stat.reshape(-1, by_stat.shape[2]).view(np.dtype((np.void, width))).ravel().tolist()


def _inserted_id(cur: sqlite3.Cursor) -> int:
    assert cur.lastrowid is not None  # None only if nothing was inserted; this INSERT was
    return cur.lastrowid


def _connect(path: Path, durable: bool) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} for writing: {says(e)}.") from e
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot open {path} as a run store: {says(e)}.") from e
    return conn
