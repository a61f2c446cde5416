"""Keras on the torch backend, or an error that says how to get it.

Importing keras picks its backend for the whole process (from ``KERAS_BACKEND``), so the
Keras adapters import it only when they are used, through ``keras_on_torch``.
"""

from __future__ import annotations

from types import ModuleType

from gradhealth.errors import ConfigError
from gradhealth.integrations._optional import load


def keras_on_torch(feature: str) -> ModuleType:
    """The ``keras`` module, checked to run on the torch backend.

    Raises ``MissingDependencyError`` (naming the extra) without Keras, and
    ``ConfigError`` (naming the environment variable) on another backend.
    """
    keras = load(("keras",), feature=feature, extra="keras")
    backend = keras.backend.backend()
    if backend != "torch":
        raise ConfigError(
            f"gradhealth watches Keras 3 on the torch backend, but this process's Keras "
            f"runs on {backend!r}. Set KERAS_BACKEND=torch in the environment before "
            f"the first `import keras` (os.environ['KERAS_BACKEND'] = 'torch', or in "
            f"the shell)")
    return keras
