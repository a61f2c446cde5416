"""``Table``: a run's per-step scalars as named numpy columns (``Run.steps``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


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
