"""Which model an optimizer trains, found without being told: what ``gradhealth run`` uses.

``Roots`` registers torch's *global* module forward hooks (every module of the process)
and records the root modules called: a module called while no other module's forward
is running. The session stops the recording after the first optimizer step (global
module hooks take every module call off PyTorch's fast path); what was recorded is kept.

``owner(params, roots)`` then names the model of an optimizer: among the recorded roots,
the one holding most of the optimizer's parameters (a DDP or ``torch.compile`` wrapper is
looked through by the watch itself); parameters it does not hold are measured by the
watch under its root (``ParamLayout.of``). Without a recorded root (a model first
called after the recording stopped), the modules alive in the process are searched
(``gc``, once per new optimizer): the smallest module holding all of the optimizer's
parameters. Parameters that no module holds are watched under an empty ``Loose`` module.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module


class Roots:
    """Root modules called since ``start``, in order of first call (weak references)."""

    def __init__(self) -> None:
        self._seen: dict[int, weakref.ref[nn.Module]] = {}
        self._depth = 0
        self._handles: list[Any] = []

    def start(self) -> None:
        self._handles = [
            torch_module.register_module_forward_pre_hook(self._enter),
            torch_module.register_module_forward_hook(self._leave, always_call=True)]

    def stop(self) -> None:
        """Stop recording (idempotent); the roots recorded so far stay."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._depth = 0

    @property
    def recording(self) -> bool:
        return bool(self._handles)

    def _enter(self, module: nn.Module, args: Any) -> None:
        if self._depth == 0 and id(module) not in self._seen:
            self._seen[id(module)] = weakref.ref(module)
        self._depth += 1

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)

    def alive(self) -> list[nn.Module]:
        out = []
        for key, ref in list(self._seen.items()):
            module = ref()
            if module is None:
                del self._seen[key]
            else:
                out.append(module)
        return out


class Loose(nn.Module):
    """Stands for the model of an optimizer whose parameters no module holds: an empty
    module, so the watch measures all of the optimizer's parameters under its root."""


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def owner(params: list[torch.Tensor], roots: Iterable[nn.Module]) -> nn.Module:
    """The model whose training ``params`` (an optimizer's) are: see the module docstring."""
    wanted = {id(p) for p in params}
    best, best_held = None, 0
    for module in roots:
        held = sum(id(p) in wanted for p in module.parameters())
        if held > best_held:
            best, best_held = module, held
    if best is not None:
        return best
    found = search(wanted)
    return found if found is not None else Loose()


def search(wanted: set[int]) -> nn.Module | None:
    """The smallest module alive in the process holding all of ``wanted`` (parameter ids);
    among equals the innermost (a wrapper and the module it wraps hold the same). None when
    no module holds them all."""
    best: tuple[int, int] | None = None
    found = None
    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        modules = [obj for obj in gc.get_objects() if _is_module(obj)]
    for obj in modules:
        ids = {id(p) for p in obj.parameters()}
        if not wanted <= ids:
            continue
        size = (len(ids), sum(1 for _ in obj.modules()))
        if best is None or size < best:
            best, found = size, obj
    return found


def _is_module(obj: Any) -> bool:
    """``isinstance(obj, nn.Module)``, False for a weak proxy whose object is gone (asking
    one its class raises ``ReferenceError``)."""
    try:
        return isinstance(obj, nn.Module)
    except ReferenceError:
        return False
