"""A model's forward failed on a measured pass: the inputs' fault, or the model's?

A module that rejects a tensor of the wrong shape, dtype or device raises a torch error
saying so (``mat1 and mat2 shapes cannot be multiplied``, ``expected scalar type Float``,
``Expected all tensors to be on the same device``): that reads as an input mismatch.
Anything else raised inside the forward (a ``KeyError`` in the model's own code, an
assertion, an attribute typo) is the model's: it is reported as such, with its type and
message in the text and the original chained, never dressed up as a shape problem.
"""

from __future__ import annotations

import re

from torch import nn

from gradhealth.errors import ForwardError, GradHealthError, InputMismatchError

_REJECTION = re.compile(
    r"shape|size|dimension|\bdims?\b|dtype|scalar type|device|channels|must match|"
    r"cannot be multiplied|not implemented for '|index out of range|out of bounds|"
    r"positional argument|keyword argument|required argument|expected (input|all tensors)|"
    r"elements|input_size|batch", re.IGNORECASE)
"""Words of torch's own messages when it refuses a tensor (and of Python's for a call
with the wrong arguments)."""


def is_rejection(err: BaseException, text: str | None = None) -> bool:
    """True when ``err`` reads as a module refusing the inputs' shape, dtype or device
    (``text``: its message, when a framework wrapped the original one in more words)."""
    if isinstance(err, NotImplementedError):  # a module without forward, an unsupported op
        return False
    return (isinstance(err, (RuntimeError, ValueError, TypeError, IndexError))
            and bool(_REJECTION.search(str(err) if text is None else text)))


def forward_failed(err: Exception, module: str | None, model: nn.Module, shown: str,
                   hint: str) -> Exception:
    """The error to raise (``from err``) for ``err``, raised in the forward of ``module``
    (qualified name, ``""`` the root; None when not known) of ``model`` on inputs described
    by ``shown``; ``hint`` says what to check in the batch."""
    if isinstance(err, GradHealthError):
        return err
    text = f"{type(err).__name__}: {err}"
    if is_rejection(err):
        where = f"module {module!r}" if module else "the model"
        return InputMismatchError(
            f"{where} rejected the inputs ({shown}): {text}. Expected inputs of the shape "
            f"and dtype this module takes; {hint}", module=module or "")
    owner = dict(model.named_modules()).get(module) if module is not None else None
    where = (f"the forward of {type(model).__name__} itself" if module == "" or owner is None
             else f"module {module!r} ({type(owner).__name__})")
    return ForwardError(
        f"{where} raised {text}. This is an error of the model's own code (or of what it "
        f"expects to find in the batch), not a shape, dtype or device mismatch: expected a "
        f"forward that runs on this batch; run model(inputs) on its own to debug it (the "
        f"original exception and its traceback are chained below)", module=module)
