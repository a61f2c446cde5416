"""Thin adapters that put ``gh.watch`` inside other frameworks' training loops.

Each lives in its own module and imports its framework only when that module is used,
so ``import gradhealth`` never pulls in Lightning, transformers, Keras or TensorBoard:

- ``lightning``: ``GradHealthCallback`` (extra ``lightning``)
- ``transformers``: ``GradHealthTrainerCallback`` (extra ``transformers``)
- ``keras``: ``GradHealthKerasCallback``, ``keras_probe`` (the probe for a Keras model),
  and ``keras_finding`` for remedies in Keras terms (extra ``keras``; Keras 3 on the
  torch backend)
- ``tensorboard``: ``TensorBoardExporter``, ``export_run`` (extra ``tensorboard``)

Install an extra with ``pip install 'gradhealth[lightning]'``; a missing framework raises
``MissingDependencyError`` (an ``ImportError``) naming the extra. The names above are
also reachable from this package (``gradhealth.integrations.GradHealthCallback``); the
module is imported on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradhealth.integrations._optional import MissingDependencyError

_WHERE = {
    "GradHealthCallback": "lightning",
    "GradHealthTrainerCallback": "transformers",
    "GradHealthKerasCallback": "keras",
    "keras_probe": "keras",
    "keras_finding": "keras",
    "keras_remedy": "keras",
    "TensorBoardExporter": "tensorboard",
    "export_run": "tensorboard",
}

__all__ = ["MissingDependencyError", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
