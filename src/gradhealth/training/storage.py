"""The journal's way into the run store: a flush window in one transaction, and a store that
cannot be written any more (a full disk) dropped with one warning, never an exception.

A watched run's store is a record of the training, not the training: when the disk fills
up mid-run, ``opt.step()`` must not raise out of the user's loop. The first failed write
warns once (``StoreWriteWarning``: ``warnings`` so that a user can filter it or make it an
error and stop, and tests can expect it) and this run writes nothing more. The failed window
was one transaction, so SQLite rolled all of it back: the store keeps every window
committed before it, readable as ever; the findings stay in the journal.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from gradhealth.errors import StoreError, StoreWriteWarning
from gradhealth.store.writer import RunStore


class Storage:
    def __init__(self, store: RunStore | None):
        self.store = store
        self.written: int | None = None  # the last step committed to the store

    def window(self, last: int | None, write: Callable[[RunStore], None]) -> None:
        """``write(store)`` in one transaction: a flush window whose last step is ``last``
        (nothing without a store, or after it failed). A StoreError ends the writing."""
        if self.store is None:
            return
        try:
            with self.store.batch() as store:
                write(store)
        except StoreError as err:
            self._stop(err)
        else:
            self.written = last if last is not None else self.written

    def set_meta(self, key: str, value: Any) -> None:
        """One metadata entry, unless there is no store (any more)."""
        if self.store is not None:
            try:
                self.store.set_meta(key, value)
            except StoreError as err:
                self._stop(err)

    def _stop(self, err: StoreError) -> None:
        store, self.store = self.store, None
        kept = "no step" if self.written is None else f"every step up to step {self.written}"
        warnings.warn(f"gradhealth: the run store {store.path if store else ''} could not be "
                      f"written ({err}); training goes on, but this watch writes nothing more "
                      f"to it. The store keeps {kept}; the findings so far stay in the watch "
                      f"(w.findings, w.report()).", StoreWriteWarning, stacklevel=3)
