"""The run store: one SQLite file per run. ``format`` (schema and encoding), ``writer``
(``RunStore``), ``reader`` (``load`` -> ``Run``)."""

from gradhealth.store.reader import Run, SkippedStep, load
from gradhealth.store.table import Table
from gradhealth.store.writer import RunStore, environment

__all__ = ["Run", "RunStore", "SkippedStep", "Table", "environment", "load"]
