"""Copy-on-write of a model's parameters while a measured forward runs.

A forward may edit its own weights in place: clamp them (``with torch.no_grad():
w.clamp_(...)`` or ``w.data.clamp_(...)``), renormalise rows (``nn.Embedding(max_norm=)``),
assign ``w.data``. The probe promises a bit-identical model, but copying every parameter
before each probe would double the model's memory for the rare forward that writes.
``Writes`` copies only what is about to be written: a ``TorchFunctionMode`` sees each
torch call of the forward, and before an in-place one (a name ending in ``_``, an
in-place operator or ``__setitem__``, ``out=``, ``inplace=True``, ``.data = ...``) whose
target shares storage with a parameter, it saves that parameter once. ``restore`` writes
the values back and sets each written parameter's version counter back, so a graph built
before the probe stays usable.

The cost when nothing is written is one Python call per torch call of the forward (about
2 us on CPU), no copy. Writes that bypass Python (a C++ extension writing a weight) are
not seen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_INPLACE_OPERATORS = frozenset((
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
    "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
    "__irshift__", "__setitem__", "__set__"))
_WEIGHT_WRITERS = {F.embedding: (3, "max_norm"), F.embedding_bag: (3, "max_norm")}
"""Functions that renormalise their weight argument (``args[1]``) in place when the
option at (position, keyword) is set: their inner in-place call is not seen by a mode."""


def _writes(name: str, kwargs: dict) -> bool:
    return ((name[-1:] == "_" and name[-2:] != "__") or name in _INPLACE_OPERATORS
            or "out" in kwargs or kwargs.get("inplace") is True)


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # sparse and other storage-less tensors: never a parameter's storage
        return None


class Writes(TorchFunctionMode):
    """While entered, save each parameter of ``model`` before its first in-place write."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._owners: dict[int, list[nn.Parameter]] = {}
        for p in model.parameters():
            ptr = _storage(p)
            if ptr:  # 0: an empty tensor, nothing to write
                self._owners.setdefault(ptr, []).append(p)
        # id -> (parameter, its data before the write, its version counter, whether that
        # data is the parameter's own old storage, to be put back as it is)
        self.saved: dict[int, tuple[nn.Parameter, torch.Tensor, int, bool]] = {}
        # the probe's look at functional calls (``measure.functional``): it shares this
        # mode, so a torch call pays for one Python dispatch, not two
        self.observer: Any = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _writes(name, kwargs):
            self._before_write(name, args, kwargs)
        elif func in _WEIGHT_WRITERS:
            position, keyword = _WEIGHT_WRITERS[func]
            if kwargs.get(keyword) is not None or (len(args) > position
                                                   and args[position] is not None):
                self._before_write(name, args[1:2], {})
        out = func(*args, **kwargs)
        observer = self.observer
        if observer is not None and name in observer.names:
            observer(name, args, kwargs, out)
        return out

    def _before_write(self, name: str, args: tuple, kwargs: dict) -> None:
        targets: list[Any] = []
        if "out" in kwargs:
            out = kwargs["out"]
            targets.extend(out if isinstance(out, (tuple, list)) else (out,))
        if args:
            first = args[0]
            targets.extend(first if isinstance(first, (tuple, list)) else (first,))
        for t in targets:
            if isinstance(t, torch.Tensor):
                for p in self._owners.get(_storage(t) or 0, ()):
                    if id(p) not in self.saved:
                        # ``.data = x`` leaves the old storage untouched: keep it as it is
                        swap = name == "__set__"
                        kept = p.data if swap else p.detach().clone()
                        self.saved[id(p)] = (p, kept, p._version, swap)

    def restore(self) -> None:
        """Put back every parameter saved (idempotent)."""
        saved, self.saved = self.saved, {}
        with torch.no_grad():
            for p, before, version, swap in saved.values():
                if swap or p.shape != before.shape or p.dtype != before.dtype \
                        or p.device != before.device:
                    p.data = before
                else:
                    p.copy_(before)
                set_version(p, version)


def set_version(p: torch.Tensor, version: int) -> None:
    """The version counter as before the forward: the values are, so a graph that saved
    ``p`` earlier is valid again (private API; without it the counter stays bumped)."""
    setter = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
    if setter is not None:
        try:
            setter((p,), (version,))
        except Exception:
            pass
