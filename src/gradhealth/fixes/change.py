"""``Change``: one record of what a fix did to a model (surgery returns what it changed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """One edit to one module.

    ``module`` is the qualified name from ``model.named_modules()`` (``""`` is the root);
    ``what`` says what changed (new values, new state_dict keys); ``why`` cites the rule
    or paper that calls for it.
    """

    module: str
    what: str
    why: str

    def __str__(self) -> str:
        return f"{self.module or '<root>'}: {self.what} ({self.why})"
