"""What every framework adapter shares: its options, one open watch, and closing it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradhealth._watch import watch
from gradhealth.errors import ConfigError, StoreError
from gradhealth.report.report import Report
from gradhealth.rules.finding import Finding
from gradhealth.training.options import check_intervals
from gradhealth.training.pacer import Every, FlushEvery
from gradhealth.training.watch import Watch


class WatchingAdapter:
    """Holds the options of ``gh.watch`` and the ``Watch`` a framework's loop runs under.

    ``watch`` is the open ``gradhealth.Watch`` while training runs (and the last one
    afterwards); ``report()``, ``findings`` and ``close()`` pass through to it. Adapters
    are context managers too, for frameworks whose loop has no hook on an exception::

        with GradHealthTrainerCallback(store="run.db") as cb:
            trainer.add_callback(cb)
            trainer.train()  # if it raises, leaving the block removes every hook
    """

    def _configure(self, store: str | os.PathLike | None, flush_every: FlushEvery,
                   sample_every: Every) -> None:
        if store is not None and not isinstance(store, (str, os.PathLike)):
            raise ConfigError(f"store= expects the path of a new run store (str or PathLike), "
                              f"got {type(store).__name__}; the adapter opens and closes it")
        check_intervals(flush_every, sample_every)
        self.store = Path(store) if store is not None else None
        self.flush_every, self.sample_every = flush_every, sample_every
        self.watch: Watch | None = None

    def _check_store(self, writer: bool) -> None:
        """Refuse an existing store before the framework spends time setting up."""
        if writer and self.store is not None and self.store.exists():
            raise StoreError(f"a run store already exists at {self.store}; give each run its "
                             f"own path (or delete the old file) before training")

    def _start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, *,
               writer: bool = True, **options: Any) -> Watch:
        """Close a watch left from an earlier run and watch ``model``; only ``writer`` stores."""
        self.close()
        self.watch = watch(model, optimizer, store=self.store if writer else None,
                           flush_every=self.flush_every, sample_every=self.sample_every,
                           **options)
        return self.watch

    def _open(self) -> Watch:
        if self.watch is None:
            raise ConfigError(f"{type(self).__name__} has no watch yet: it starts when "
                              f"training starts; call report() after (or during) training")
        return self.watch

    @property
    def findings(self) -> list[Finding]:
        return self._open().findings

    def report(self) -> Report:
        """The watch's report: findings and the latest window's per-module statistics."""
        return self._open().report()

    def close(self) -> None:
        """Flush the last window, remove every hook, close the store (idempotent)."""
        if self.watch is not None:
            self.watch.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
