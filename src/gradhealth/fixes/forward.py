"""Running the model for a remedy: on the inputs it was given, leaving no trace.

``call`` passes a tensor, a tuple/list of positional inputs or a dict of keyword inputs
the way ``probe`` does; ``call_checked`` reports the model's own failure on them as
``InputMismatchError``; ``preserved_state`` restores buffers, RNG state and modes after a
forward pass; ``require_module`` refuses anything but a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gradhealth.errors import ConfigError, GradHealthError, InputMismatchError, describe
from gradhealth.measure.snapshot import Snapshot


def require_module(model: Any, remedy: str) -> None:
    """A remedy is given the model itself: anything else is a ConfigError saying so."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{remedy} expects the model (a torch.nn.Module), got "
                          f"{describe(model)}")


def call_checked(model: nn.Module, inputs: Any, what: str) -> Any:
    """``call``, with the model's own failure on ``inputs`` reported as InputMismatchError."""
    try:
        return call(model, inputs)
    except GradHealthError:
        raise
    except Exception as err:
        raise InputMismatchError(
            f"{what}: the model failed on the given inputs ({describe(inputs)}): "
            f"{type(err).__name__}: {err}. Expected inputs the model takes, as in "
            f"model(inputs); the model is unchanged") from err


def call(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on a tensor, a tuple/list of positional inputs, or a dict of kwargs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a forward pass without leaving a trace: buffers, RNG and modes restored."""
    snapshot = Snapshot.capture(model)
    try:
        with torch.no_grad():
            yield
    finally:
        snapshot.restore()
