"""How a run store is opened for reading: read-only, one snapshot per read, and on
read-only media a private copy when SQLite cannot read the file where it lies.

A store whose writer was killed keeps its WAL (``run.db-wal``, the committed windows not yet
copied into ``run.db``) and the WAL's index (``run.db-shm``). SQLite reads such a store
read-only only if it can open or create the index. On read-only media holding the WAL but
not the index (an archive, a copy that skipped it, a read-only mount) it cannot, and says
"unable to open database file". Two ways out: ``immutable=1`` in the URI tells SQLite the
file cannot change, so it needs no index, but it then ignores the WAL as well and silently
drops every window committed since the last checkpoint (often the whole run of a killed
writer). ``Source`` takes the other: it copies the store and its WAL into a private
temporary folder, where SQLite builds the index, and reads the copy; the copy lives as
long as the ``Run`` read from it and is deleted with it.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gradhealth.errors import StoreError
from gradhealth.store.format import identify, says


class Source:
    """Where a store's bytes are read from: the file itself, or a private copy of it."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path
        self._copy: tempfile.TemporaryDirectory[str] | None = None

    @property
    def copied(self) -> bool:
        """Whether reads go to a private copy (read-only media, a WAL without its index)."""
        return self._copy is not None

    @contextmanager
    def reading(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A read-only connection and the schema version, inside one read transaction (one
        consistent snapshot). StoreError for a missing, foreign or unreadable file."""
        path = self.path
        if not path.exists():
            raise StoreError(f"no run store at {path}: expected a file written by gradhealth "
                             "(RunStore / gh.watch); check the path.")
        if not path.is_file():
            raise StoreError(f"{path} is not a file; give the path of a gradhealth run store.")
        conn = _connect(self._file, path)
        try:
            try:
                version = identify(conn, path)
            except StoreError as err:
                if self.copied or not _index_missing(path, err):
                    raise
                conn.close()
                conn = _connect(self._private_copy(), path)
                version = identify(conn, path)
            conn.execute("BEGIN")
            yield conn, version
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the run store {path}: {says(e)}; the file "
                             "is damaged or incomplete (changed outside gradhealth, or "
                             "corrupt): restore it from a copy, or record the run again.") from e
        finally:
            conn.close()

    def _private_copy(self) -> Path:
        copy = tempfile.TemporaryDirectory(prefix="gradhealth-read-")
        target = Path(copy.name) / self.path.name
        try:
            shutil.copyfile(self.path, target)
            shutil.copyfile(f"{self.path}-wal", f"{target}-wal")
        except OSError as e:
            copy.cleanup()
            raise StoreError(
                f"cannot read {self.path}: it lies on read-only media with its WAL "
                f"({self.path.name}-wal) but without the WAL's index ({self.path.name}-shm), "
                f"and a private copy to read could not be made in {tempfile.gettempdir()} "
                f"({e.strerror or e}); free space there (or set TMPDIR), or copy the store "
                f"and its -wal file to writable storage and read the copy.") from e
        self._copy, self._file = copy, target
        return target


def _connect(file: Path, path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} for reading: {says(e)}.") from e


def _index_missing(path: Path, err: StoreError) -> bool:
    """Whether ``err`` is SQLite failing to open a WAL store whose index is missing and
    cannot be made (the folder is read-only)."""
    return (isinstance(err.__cause__, sqlite3.OperationalError)
            and Path(f"{path}-wal").is_file() and not Path(f"{path}-shm").exists())
