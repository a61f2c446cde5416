"""One exception hierarchy for gradhealth.

Every message says what was expected, what was got, and what to do. Each class also
derives from the built-in exception a caller would naturally catch (``ValueError``,
``TypeError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class GradHealthError(Exception):
    """Base class of every error gradhealth raises on purpose."""


class NoTrainableParametersError(GradHealthError, ValueError):
    """The model has no parameter with ``requires_grad=True``."""


class InputMismatchError(GradHealthError, ValueError):
    """A module rejected the inputs (wrong shape, dtype or device).

    ``module`` is the qualified name of the innermost module that raised.
    """

    def __init__(self, message: str, module: str | None = None):
        super().__init__(message)
        self.module = module


class ForwardError(GradHealthError, RuntimeError):
    """The model's own forward raised something other than a rejection of the inputs'
    shape, dtype or device (a bug in the model's code, a missing key, ...).

    ``module`` is the qualified name of the innermost module that raised (``""``: the
    root model's own forward); the original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, module: str | None = None):
        super().__init__(message)
        self.module = module


class TargetMismatchError(GradHealthError, ValueError):
    """The targets do not fit the model's output under the chosen loss."""


class LossNotScalarError(GradHealthError, ValueError):
    """The loss function returned something other than a finite-or-not scalar tensor."""


class DisconnectedLossError(GradHealthError, ValueError):
    """The loss does not depend on any trainable parameter (detached or under no_grad)."""


class UnsupportedModelError(GradHealthError, TypeError):
    """The object given is not something gradhealth can measure (e.g. not an nn.Module)."""


class FixRefusedError(GradHealthError, RuntimeError):
    """A remedy cannot be applied to this model (its structure, or findings no change of
    ``gh.fix`` repairs, such as NaN made by the model's own code); the model is unchanged.

    ``result`` is ``gh.fix``'s attempt when it raised this (a ``FixResult``: the findings,
    the plan, the notes saying why nothing was done), else None.
    """

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class FixIncompleteError(FixRefusedError):
    """``gh.fix`` applied remedies but the re-probe was still not healthy (or a later round
    failed): every round was rolled back and the model is bit-identical to before.

    ``result`` is the attempt (a ``FixResult``: the plan, the changes that were made and
    undone, and the last re-probe), for a caller who wants to see what was tried.
    """


class StoreError(GradHealthError, RuntimeError):
    """A run store cannot be created, written or read."""


class ConfigError(GradHealthError, ValueError):
    """An option has a value outside its domain."""


class DataNotFoundError(GradHealthError, FileNotFoundError):
    """A data set the lab needs is not on this machine; the message says how to get it."""


class GradHealthWarning(UserWarning):
    """Base class of every warning gradhealth issues: something went wrong that does not stop
    the work (``warnings.filterwarnings("error", category=GradHealthWarning)`` makes them
    errors)."""


class StoreWriteWarning(GradHealthWarning):
    """A watched run's store could not be written (a full disk, say): training goes on,
    the findings stay in memory, the store keeps every window committed before."""


def describe(value: object) -> str:
    """A short, safe description of ``value`` for error messages."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
