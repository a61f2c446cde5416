"""The writer's lock: while a process writes a run store, no other may replace it
(``remove_store`` checks it before deleting a store to replace it).

SQLite's own locks last one transaction; between two flush windows a writer holds none,
so nothing stops another process from deleting the file under it (the writer then goes
on writing into an unlinked file and every step is lost). The writer therefore holds an
advisory lock (``flock``, exclusive) on the store file for as long as it is open;
``RunStore.create(..., overwrite=True)`` and ``RunStore.open`` take it first and refuse a
store whose lock another writer holds. Readers (``gh.load``, ``gradhealth report``) never
take it. The operating system drops the lock when the writer's process ends, however it
ends (SIGKILL included), so a crashed run's store can be replaced or appended to.

``flock`` locks and SQLite's POSIX record locks are independent on Linux, so the two do
not interfere. Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from gradhealth.errors import StoreError
from gradhealth.store.format import identify

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class WriterLock:
    """An exclusive advisory lock on a store file, held until ``release``."""

    def __init__(self, fd: int | None, path: Path):
        self._fd, self.path = fd, path

    @classmethod
    def acquire(cls, path: Path, fd: int | None = None) -> WriterLock:
        """Lock ``path`` (through ``fd`` if given: the lock then owns it); StoreError if
        another writer holds it."""
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise StoreError(f"cannot open {path} to lock it for writing: "
                                 f"{e.strerror or e}.") from e
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreError(
                    f"{path} is being written by another run (a gh.watch or RunStore that is "
                    f"still open, in this process or another); it cannot be replaced or "
                    f"appended to while that run writes. Choose a new path, or close the "
                    f"other run first.") from None
        return cls(fd, path)

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases its flock


def is_being_written(path: Path) -> bool:
    """Whether a writer holds ``path``'s lock now (a shared lock is tried and dropped at
    once: it never stands in a writer's way for longer than the call)."""
    if fcntl is None:  # pragma: no cover - Windows: unknown, say yes
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor drops the shared lock, if taken
    return False


def ensure_unlocked(path: Path) -> None:
    """StoreError when another writer holds ``path``'s lock (nothing is kept locked)."""
    WriterLock.acquire(path).release()


def ensure_writable(path: Path, doing: str) -> None:
    """StoreError unless the store file and its folder can be written: appending needs the
    file, and SQLite makes and removes the WAL (``-wal``, ``-shm``) in the folder.
    ``os.access`` answers for read-only file systems (EROFS) even to root."""
    for what, p in (("file", path), ("folder", path.parent)):
        if not os.access(p, os.W_OK):
            instead = ("choose a new path on writable storage" if doing == "replace" else
                       f"copy it (with any {path.name}-wal next to it) to writable storage "
                       f"and open the copy")
            raise StoreError(f"cannot {doing} {path}: its {what} {p} is not writable (a "
                             f"read-only file system, or permissions). Read it with "
                             f"gradhealth.load, or {instead}.")


def remove_store(path: Path) -> None:
    """Delete a run store and its WAL files; refuse anything else, and a store that another
    run is still writing."""
    if not path.is_file():
        raise StoreError(f"{path} exists and is not a file; choose another path.")
    ensure_unlocked(path)
    ensure_writable(path, "replace")
    if path.stat().st_size > 0:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            identify(conn, path)
        except StoreError as e:
            raise StoreError(f"refusing to overwrite {path}: {e}") from e
        finally:
            conn.close()
    try:
        for suffix in ("", "-wal", "-shm", "-journal"):
            # a stale -wal left behind would be replayed into the new file
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    except OSError as e:
        raise StoreError(f"cannot replace {path}: removing {e.filename} failed "
                         f"({e.strerror or e}); choose a new path.") from e
