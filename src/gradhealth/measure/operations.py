"""Which torch operation turned finite inputs into NaN/Inf, and on which line of the model.

Module hooks see a module's inputs and outputs, not the operations of its forward: a NaN
made by ``torch.log(h - 1e3)`` written in a model's own ``forward`` (between two
children) is the root module's, and which operation it was is left to guess.
``Operations`` is a ``TorchFunctionMode`` that checks the output of every torch call of a
forward, and records each call whose output is non-finite while its tensor inputs are
finite (unless it wrote an infinite constant on purpose: a ``-inf`` attention mask), or
whose output holds NaN while its inputs hold none (softmax over a row of ``-inf``), with
the module whose forward was running and the line and function of the model's source
that called it (the first frame outside torch and gradhealth's own machinery).

It synchronises with the device at every call, so it only runs on a failure path: the
guard's replay of a non-finite step, or a probe's second forward once its first one has
seen a non-finite output; never on a training step or a healthy probe.
"""

from __future__ import annotations

import linecache
import math
import os
import sys
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from gradhealth.measure.taps import floating_leaves

MAX_RECORDED = 50
_TORCH = os.path.dirname(torch.__file__) + os.sep
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_USERS = tuple(_OURS + d + os.sep for d in ("zoo", "lab"))  # models, not machinery


class Operations(TorchFunctionMode):
    """While entered (and its modules hooked, ``with Operations(model):``), record the
    calls that made NaN/Inf from finite inputs: ``found``, in call order, each a dict of
    ``module`` (qualified name, ``""`` the root), ``operation``, ``file``, ``line``, ``code``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.found: list[dict[str, Any]] = []
        self._stack: list[str] = []
        self._handles: list[Any] = []

    def __enter__(self) -> Operations:
        try:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave))
        except BaseException:
            self._remove()
            raise
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self._stack.append(name)
        return hook

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._stack and len(self.found) < MAX_RECORDED:
            try:
                self._check(func, args, kwargs, out)
            except Exception:  # a check must never break the user's forward
                pass
        return out

    def _check(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outs = floating_leaves(out)
        if not outs or all(bool(torch.isfinite(t).all()) for t in outs):
            return
        ins = floating_leaves((args, kwargs))
        if all(bool(torch.isfinite(t).all()) for t in ins):
            if _infinite_constant((args, kwargs)):
                return  # an Inf written on purpose: masked_fill(mask, float("-inf"))
        elif not (any(bool(torch.isnan(t).any()) for t in outs)
                  and not any(bool(torch.isnan(t).any()) for t in ins)):
            return  # it only passed a NaN/Inf on (a NaN made from an Inf is recorded)
        frame = _caller()
        if frame is None:  # gradhealth's own hook code, not the model's
            return
        self.found.append({"module": self._stack[-1], "operation": _name(func),
                           **source(frame)})


def _infinite_constant(value: Any) -> bool:
    """Whether a call's arguments hold an infinite Python number (a mask's fill value)."""
    if isinstance(value, float):
        return math.isinf(value)
    if isinstance(value, (tuple, list)):
        return any(_infinite_constant(v) for v in value)
    if isinstance(value, dict):
        return any(_infinite_constant(v) for v in value.values())
    return False


def source(frame: tuple[str, int, str]) -> dict[str, Any]:
    """``file``, ``line``, ``function`` and ``code`` of a ``caller()`` frame."""
    filename, line, function = frame
    return {"file": filename, "line": line, "function": function,
            "code": linecache.getline(filename, line).strip()}


def _name(func: Any) -> str:
    try:
        return resolve_name(func) or getattr(func, "__name__", repr(func))
    except Exception:
        return getattr(func, "__name__", repr(func))


def caller() -> tuple[str, int, str] | None:
    """File, line and function of the first frame outside torch and this package (None:
    our own code)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename not in MACHINERY and not filename.startswith(_TORCH):
            if filename.startswith(_OURS) and not filename.startswith(_USERS):
                return None
            return filename, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back
    return None


_caller = caller
MACHINERY = {__file__}
"""Files whose frames ``caller`` looks past: the recorders' own (``measure.backward``
adds itself)."""
