"""Optional dependencies of the integrations: imported once, and named with their extra.

gradhealth itself needs only torch, numpy and rich. Each integration's framework comes
from an extra (``pip install 'gradhealth[lightning]'``); an integration module imports
its framework once, when the module is first imported, and a missing framework is
reported when the adapter is constructed, with the command that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from gradhealth.errors import GradHealthError


class MissingDependencyError(GradHealthError, ImportError):
    """An integration's framework is not installed; the message says which extra to install."""


def message(feature: str, package: str, extra: str, err: BaseException | None = None) -> str:
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return (f"{feature} needs {package}, which could not be imported{why}. Install it "
            f"with: pip install 'gradhealth[{extra}]'")


def load(modules: Sequence[str], *, feature: str, extra: str) -> ModuleType:
    """The first of ``modules`` that imports; ``MissingDependencyError`` when none does."""
    first: BaseException | None = None
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError as err:  # ModuleNotFoundError, or a broken install
            first = first or err
    raise MissingDependencyError(message(feature, " or ".join(modules), extra, first)) from first


def base_class(modules: Sequence[str], name: str, *, feature: str, extra: str) -> type:
    """Class ``name`` of the first importable module, or a stand-in that raises when built.

    The stand-in lets ``import gradhealth.integrations.X`` succeed without the framework
    (so documentation tools and ``dir()`` work); constructing the adapter then raises
    ``MissingDependencyError`` naming the extra.
    """
    try:
        return getattr(load(modules, feature=feature, extra=extra), name)
    except MissingDependencyError as err:
        error = str(err)

        def __init__(self, *args, **kwargs):
            raise MissingDependencyError(error)

        return type(f"Missing{name}", (), {"__init__": __init__, "__doc__": error})
