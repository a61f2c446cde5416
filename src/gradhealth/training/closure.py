"""Optimizer steps called with a closure (``optimizer.step(closure)``: LBFGS, Lightning).

The optimizer's step pre-hook runs before the closure, while the parameters still hold
the previous step's gradients. For such a step the watch hands the optimizer a wrapped
closure instead (a step pre-hook may return new arguments): its first evaluation runs
the user's closure (forward and backward), then opens the watch's step on the fresh
gradients; later evaluations of the same step (LBFGS's line search) run the closure
alone. The optimizer gets the closure's return value unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def closure_of(args: tuple, kwargs: dict) -> Callable[[], Any] | None:
    """The closure of an ``optimizer.step(...)`` call, from the arguments its step hooks
    get (``args[0]`` is the optimizer itself)."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    return closure if callable(closure) else None


def with_closure(args: tuple, kwargs: dict, closure: Callable[[], Any]) -> tuple[tuple, dict]:
    """The step's arguments with ``closure`` in place of the one it was given."""
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure) + tuple(args[2:]), kwargs


class FirstEvaluation:
    """Wraps a step's closure: after its first evaluation, ``opened(loss)`` is called."""

    def __init__(self, closure: Callable[[], Any], opened: Callable[[Any], None]):
        self.closure, self.opened = closure, opened
        self.done = False

    def __call__(self) -> Any:
        loss = self.closure()
        if not self.done:
            self.done = True
            self.opened(loss)
        return loss
